"""The fixed batching protocol: a partition of the training indices into batches.

A contrastive loss depends on who else is in a pair's batch, so the partition is part of the
experiment (docs/math.md §2): the objective, every influence estimate and every leave-out
retraining use the same one. It is drawn once from a seed; its whole state is the array of batch
ids (:attr:`BatchingProtocol.batch_ids`), which callers store and pass back to the constructor.

Two ways to draw it: uniformly at random (:meth:`BatchingProtocol.from_seed`), or grouped around
a hard-negative graph (:meth:`BatchingProtocol.from_hard_negatives`, docs/math.md §16), so
that each pair shares its batch with the captions it is most easily confused with. :func:`within_batch_mean` measures how similar batch mates are under a given matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BatchingProtocol", "within_batch_mean"]


@dataclass(frozen=True)
class BatchingProtocol:
    """A partition of ``range(n)`` into batches ``B_1..B_M``.

    Attributes
    ----------
    batch_ids:
        Integer array of shape ``(n,)``; ``batch_ids[k]`` is the batch of training pair ``k``.
        Ids are ``0..M-1`` and every id occurs at least once.
    """

    batch_ids: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.batch_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(
                f"batch_ids must be a non-empty 1-D array of batch ids, got shape {ids.shape}."
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"batch_ids must be integers, got dtype {ids.dtype}.")
        uniq = np.unique(ids)
        if uniq[0] != 0 or uniq[-1] != len(uniq) - 1:
            raise ValueError(
                "batch ids must be 0..M-1 with every id used; renumber them (np.unique(ids, "
                "return_inverse=True)[1]) before building a BatchingProtocol."
            )
        object.__setattr__(self, "batch_ids", ids.astype(np.int64))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_seed(cls, n: int, batch_size: int | None, seed: int) -> "BatchingProtocol":
        """Draw a random partition of ``n`` indices into batches of ``batch_size``.

        ``batch_size=None`` (or ``>= n``) gives one full batch. Otherwise the indices are
        permuted with ``numpy.random.default_rng(seed)`` and cut into consecutive chunks of
        ``batch_size``; the last batch holds the remainder (at least 2 pairs: a remainder of one
        pair is merged into the previous batch, since a one-pair batch has no negatives).
        """
        if n < 2:
            raise ValueError(f"need at least 2 pairs for a contrastive loss, got n={n}.")
        if batch_size is None or batch_size >= n:
            return cls(np.zeros(n, dtype=np.int64))
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a batch needs negatives), got {batch_size}.")
        perm = np.random.default_rng(seed).permutation(n)
        ids = np.empty(n, dtype=np.int64)
        ids[perm] = np.arange(n) // batch_size
        if n % batch_size == 1:  # a lone pair has no negatives: merge it into the previous batch
            ids[perm[-1]] = ids[perm[-2]]
        return cls(ids)

    @classmethod
    def from_hard_negatives(cls, neighbours, batch_size: int | None, seed: int) -> "BatchingProtocol":
        """Batches grown around a hard-negative graph (docs/math.md §16).

        ``neighbours`` is an integer array ``(n, m)``, ``m >= 1``: row ``k`` lists pair ``k``'s
        hard negatives, hardest first (other pairs, no repeats needed, never ``k`` itself).
        The pairs are visited in the order of ``numpy.random.default_rng(seed).permutation(n)``.
        The first pair not yet placed opens a batch; the batch then grows one pair at a time,
        always by the unplaced pair with the most hard-negative links to its members (``j`` in
        ``k``'s row or ``k`` in ``j``'s, for a member ``k``), ties broken by the visiting order;
        when no unplaced pair is linked to the batch, the next unplaced pair of the visiting
        order joins it. So every batch but the last holds exactly ``batch_size`` pairs, the last
        the remainder; a remainder of one pair takes the last-placed pair of the previous batch
        (sizes ``batch_size - 1`` and ``2``), so
        every batch holds between 2 and ``batch_size`` pairs and every index is in exactly one
        (the one exception: ``batch_size=2`` with an odd ``n`` ends in one batch of 3, the lone
        pair joining the previous batch, since pairs of two cannot cover an odd count).
        ``batch_size=None`` (or ``>= n``) gives one full batch, as :meth:`from_seed`. The result
        is a function of ``(neighbours, batch_size, seed)`` only.
        """
        nb = np.asarray(neighbours)
        if nb.ndim != 2 or nb.shape[1] < 1:
            raise ValueError(f"neighbours must be a 2-D array (n, m) with m >= 1 hard negatives per pair, got shape "
                             f"{nb.shape}.")
        if not np.issubdtype(nb.dtype, np.integer):
            raise ValueError(f"neighbours must hold integer pair indices, got dtype {nb.dtype}.")
        n = nb.shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 pairs for a contrastive loss, got n={n}.")
        if nb.min() < 0 or nb.max() >= n:
            raise ValueError(f"neighbours holds indices outside 0..{n - 1} (min {nb.min()}, max {nb.max()}); "
                             "row k must list pairs of the same training set.")
        selfish = np.flatnonzero((nb == np.arange(n)[:, None]).any(axis=1))
        if selfish.size:
            raise ValueError(f"pair {int(selfish[0])} lists itself as a hard negative ({selfish.size} rows do); "
                             "exclude the diagonal when mining.")
        if batch_size is None or batch_size >= n:
            return cls(np.zeros(n, dtype=np.int64))
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a batch needs negatives), got {batch_size}.")
        order = np.random.default_rng(seed).permutation(n)
        priority = np.empty(n, dtype=np.float64)
        priority[order] = -np.arange(n) / n  # in (-1, 0]: breaks ties of the link counts by visiting order
        links_in = [[] for _ in range(n)]  # links_in[j]: the pairs that list j as a hard negative
        for k, row in enumerate(nb.tolist()):
            for j in row:
                links_in[j].append(k)
        ids = np.full(n, -1, dtype=np.int64)
        links = np.zeros(n, dtype=np.float64)  # links of each pair to the members of the open batch
        sequence = np.empty(n, dtype=np.int64)  # the pairs in the order they were placed
        batch, size = 0, 0
        for placed in range(n):
            key = np.where(ids >= 0, -np.inf, links + priority)
            k = int(np.argmax(key))  # most links to the batch; with none, the next pair of the visiting order
            ids[k], sequence[placed] = batch, k
            np.add.at(links, nb[k], 1.0)
            np.add.at(links, np.asarray(links_in[k], dtype=np.int64), 1.0)
            size += 1
            if size == batch_size:
                batch, size = batch + 1, 0
                links[:] = 0.0
        if n % batch_size == 1:  # a lone pair has no negatives
            if batch_size > 2:  # it takes the previous batch's last-placed pair
                ids[sequence[-2]] = ids[sequence[-1]]
            else:  # batches of 2 cannot cover an odd n: the lone pair joins the previous batch
                ids[sequence[-1]] = ids[sequence[-2]]
        return cls(ids)

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        """Number of training pairs."""
        return int(self.batch_ids.size)

    @property
    def n_batches(self) -> int:
        """Number of batches ``M``."""
        return int(self.batch_ids.max()) + 1

    @property
    def batch_sizes(self) -> np.ndarray:
        """Array ``(M,)`` of batch sizes."""
        return np.bincount(self.batch_ids, minlength=self.n_batches)

    def batches(self) -> list[np.ndarray]:
        """The batches as a list of sorted index arrays."""
        order = np.argsort(self.batch_ids, kind="stable")
        return np.split(order, np.cumsum(self.batch_sizes)[:-1])

    def padded(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded index matrix for vectorised batch computations.

        Returns
        -------
        index:
            Long tensor ``(M, b_max)``; row ``m`` lists the pairs of batch ``m`` in increasing
            order, padded with ``0``.
        valid:
            Bool tensor ``(M, b_max)``; ``False`` marks padding.
        """
        sizes = self.batch_sizes
        m, b_max = self.n_batches, int(sizes.max())
        order = np.argsort(self.batch_ids, kind="stable")
        pos = np.arange(self.n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        index = np.zeros((m, b_max), dtype=np.int64)
        valid = np.zeros((m, b_max), dtype=bool)
        index[self.batch_ids[order], pos] = order
        valid[self.batch_ids[order], pos] = True
        return torch.as_tensor(index, device=device), torch.as_tensor(valid, device=device)


def within_batch_mean(similarity, batching: BatchingProtocol) -> float:
    """Mean of ``similarity[a, b]`` over ordered pairs ``a != b`` that share a batch.

    ``similarity`` is an ``(n, n)`` array or tensor (any device; read on the CPU) (e.g. degraded image ``a`` against caption
    ``b``); the diagonal is left out. A hard-negative batching should give a larger value than a
    random one of the same batch size. Returns a Python float (``nan`` when no batch has two
    pairs, which a :class:`BatchingProtocol` never allows).
    """
    s = similarity.detach().cpu().numpy() if isinstance(similarity, torch.Tensor) else np.asarray(similarity)
    n = batching.n
    if s.shape != (n, n):
        raise ValueError(f"similarity must be ({n}, {n}) for a batching of {n} pairs, got {tuple(s.shape)}.")
    ids = batching.batch_ids
    same = (ids[:, None] == ids[None, :]) & ~np.eye(n, dtype=bool)
    return float(s[same].astype(np.float64).mean())
