"""The fixed batching protocol: a partition of the training indices into batches.

A contrastive loss depends on who else is in a pair's batch, so the partition is part of the
experiment (docs/math.md §2): the objective, every influence estimate and every leave-out
retraining use the same one. It is drawn once from a seed; its whole state is the array of batch
ids (:attr:`BatchingProtocol.batch_ids`), which callers store and pass back to the constructor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BatchingProtocol"]


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
