"""The contrastive objective ``L`` and its per-pair terms, over parameters (docs/math.md §1-§8).

:class:`ContrastiveObjective` turns a parameter vector ``theta`` into the similarities of every
batch, ``S[m, i, j] = exp(t) <u_a, v_b>`` (``u``, ``v`` the normalised image and text embeddings
of the pairs ``a``, ``b`` in slots ``i``, ``j`` of batch ``m``), and hands them to the pure
functions of :mod:`ecif.core.terms`, which hold the formulas. Here live what depends on
``theta``: embedding, the padded batch layout (all batches at once as an ``(M, b_max, b_max)``
tensor with a keep mask), removal of pairs, the scatter of per-slot values back to pair order,
and the loss, gradient, Hessian-vector product and Hessian.

``L(theta) = (1/n) sum_m sum_{k in B_m} Pos_k + (lam/2) ||theta - theta0||^2``. Removing a set
``R`` deletes its rows and columns from every batch and keeps ``1/n`` and the regulariser, so
``L - L_{-{k}} = (1/n) [Pos_k + NegExact_k]`` exactly (docs/math.md §3-§4).
"""

from __future__ import annotations


from dataclasses import fields

import numpy as np
import torch
from torch.func import grad, jacrev

from ecif.core import terms
from ecif.core.batching import BatchingProtocol
from ecif.core.heads import Parametrization, Prepared
from ecif.core.terms import DTYPE, TERMS

__all__ = ["ContrastiveObjective", "PRECISIONS"]

#: Precisions of :meth:`ContrastiveObjective.hvp`: ``"float64"`` computes every product in
#: float64; ``"float32"`` computes each batch chunk's product in float32 and accumulates the
#: chunks in float64 (docs/math.md §15).
PRECISIONS = ("float64", "float32")


def _as_features(a, name: str, device) -> torch.Tensor:
    if isinstance(a, np.ndarray) and not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}.")
    t = torch.as_tensor(a, device=device)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real floating-point features, got dtype {t.dtype}.")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {tuple(t.shape)}.")
    t = t.to(DTYPE)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains NaN or Inf in {bad} row(s); clean or drop those pairs before "
            "building the objective."
        )
    return t


class ContrastiveObjective:
    """Symmetric InfoNCE over a fixed batching protocol, with an L2 pull to ``theta0``.

    Parameters
    ----------
    param:
        A :class:`~ecif.core.heads.Parametrization` (LoRA adapters or linear heads).
    x, y:
        Frozen image features ``(n, d_img)`` and text features ``(n, d_txt)``; converted to
        float64 and put on ``param.device``, where every computation of the objective runs.
    batching:
        The fixed :class:`~ecif.core.batching.BatchingProtocol`; default one full batch.
    lam:
        Regularisation strength ``lam >= 0`` of ``(lam/2) ||theta - theta0||^2``.
    remove:
        Indices ``R`` of removed pairs (used by :meth:`without`); ``1/n`` keeps the full ``n``.
    """

    def __init__(self, param: Parametrization, x, y, batching: BatchingProtocol | None = None,
                 lam: float = 0.0, remove=None, _parent: "ContrastiveObjective | None" = None):
        # the features go where the parameters are (param.device): every computation runs there
        device = param.device
        x, y = _as_features(x, "x (image features)", device), _as_features(y, "y (text features)", device)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must hold the same number of pairs, got {x.shape[0]} and {y.shape[0]}."
            )
        if x.shape[1] != param.d_img or y.shape[1] != param.d_txt:
            raise ValueError(
                f"feature widths ({x.shape[1]}, {y.shape[1]}) do not match the parametrization "
                f"(d_img={param.d_img}, d_txt={param.d_txt})."
            )
        n = x.shape[0]
        batching = batching if batching is not None else BatchingProtocol.from_seed(n, None, 0)
        if batching.n != n:
            raise ValueError(
                f"the batching protocol covers {batching.n} pairs but there are {n}; draw it with "
                f"BatchingProtocol.from_seed({n}, batch_size, seed)."
            )
        if not (np.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}.")
        self.param, self.batching, self.lam, self.n = param, batching, float(lam), n
        self._x, self._y = x, y
        if _parent is not None:  # same param, features and batching: share the prepared data
            self.data, self.index, self.valid, self._bdata = (_parent.data, _parent.index, _parent.valid,
                                                              _parent._bdata)
            self._bdata_cast = _parent._bdata_cast  # the same cache of lower-precision copies
            self._bconst = _parent._bconst
        else:
            self.data = param.prepare(x, y)
            self.index, self.valid = batching.padded(device)
            # the prepared data once more in batch order (row ``m * b_max + i`` holds slot ``i`` of
            # batch ``m``; padding repeats pair ``index[m, i] = 0``): every batch chunk is then a
            # contiguous slice, with no gather per product
            rows = self.index.reshape(-1)
            self._bdata = param.take(self.data, rows)
            self._bdata_cast: dict = {}
            # per-batch constants of the parametrization's own cosines (LoRA heads: the frozen
            # base's batch numerators), computed once and shared with :meth:`without`
            self._bconst = param.batch_constants(self._bdata, self.index.shape[1])
        self.removed = self._check_remove(remove) if remove is not None else np.zeros(0, np.int64)
        removed_mask = torch.zeros(n, dtype=torch.bool, device=device)
        removed_mask[torch.as_tensor(self.removed, device=device)] = True
        self.keep = self.valid & ~removed_mask[self.index]
        self.masks = terms.masks(self.keep)

    # ------------------------------------------------------------------ construction
    def _check_remove(self, remove) -> np.ndarray:
        r = remove.cpu().numpy() if isinstance(remove, torch.Tensor) else np.asarray(remove)
        if r.dtype == bool:
            if r.shape != (self.n,):
                raise ValueError(f"a boolean removal mask must have shape ({self.n},), got {r.shape}.")
            r = np.flatnonzero(r)
        r = r.reshape(-1)
        if r.size == 0:
            raise ValueError("the removal set is empty; pass at least one pair index.")
        if not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"removal indices must be integers, got dtype {r.dtype}.")
        if r.min() < 0 or r.max() >= self.n:
            raise ValueError(
                f"removal indices must lie in [0, {self.n}), got min {r.min()} and max {r.max()}."
            )
        r = np.unique(r)
        left = np.bincount(self.batching.batch_ids, minlength=self.batching.n_batches) - np.bincount(
            self.batching.batch_ids[r], minlength=self.batching.n_batches
        )
        if (left == 0).any():
            emptied = np.flatnonzero(left == 0).tolist()
            raise ValueError(
                f"removing these pairs empties batch(es) {emptied[:10]} of the batching protocol; "
                "remove fewer pairs or use larger batches."
            )
        return r.astype(np.int64)

    def without(self, remove) -> "ContrastiveObjective":
        """The leave-out objective ``L_{-R}``: same data, batching, ``1/n`` and regulariser.

        ``remove`` is an index array or a boolean mask of shape ``(n,)``; it is added to any
        pairs already removed from this objective.
        """
        r = self._check_remove(remove)
        return ContrastiveObjective(self.param, self._x, self._y, self.batching, self.lam,
                                    remove=np.union1d(self.removed, r), _parent=self)

    def batch_subset(self, n_pairs: int) -> "ContrastiveObjective":
        """The objective of the pairs in the first batches of the protocol, about ``n_pairs`` of
        them (whole batches, at least one): same parametrization, batches, removed pairs and
        ``lam``, with its own ``1/n_sub``. A cheap stand-in for the full objective (the
        protocol's batches are a random partition, so the first ones are a random subsample),
        e.g. to start a fit (:func:`ecif.core.fit.fit`'s ``subsample``)."""
        sizes = self.batching.batch_sizes
        m = min(max(1, int(np.searchsorted(np.cumsum(sizes), n_pairs)) + 1), self.batching.n_batches)
        rows = np.flatnonzero(self.batching.batch_ids < m)
        removed = np.searchsorted(rows, self.removed[np.isin(self.removed, rows)])
        rows_t = torch.as_tensor(rows, device=self.device)
        return ContrastiveObjective(self.param, self._x[rows_t], self._y[rows_t],
                                    BatchingProtocol(self.batching.batch_ids[rows]), self.lam,
                                    remove=removed if removed.size else None)

    def with_lam(self, lam: float) -> "ContrastiveObjective":
        """The same objective with another regularisation strength."""
        return ContrastiveObjective(self.param, self._x, self._y, self.batching, lam,
                                    remove=self.removed if self.removed.size else None, _parent=self)

    @property
    def n_params(self) -> int:
        return self.param.n_params

    @property
    def device(self) -> torch.device:
        """Where the features and parameters live and every computation runs."""
        return self._x.device

    @property
    def theta0(self) -> torch.Tensor:
        return self.param.theta0

    # ------------------------------------------------------------------ similarities
    #: Batches are processed in chunks of about this many similarity entries: every temporary
    #: of a pass stays a few MiB (cache, allocator reuse), whatever ``n``. Whole-``n`` temporaries
    #: cost a fresh zeroed mapping of every page per product and made one Hessian-vector
    #: product grow faster than ``n``.
    CHUNK_ENTRIES = 2**20

    def _chunks(self) -> list[slice]:
        """Consecutive slices of batches (rows of :attr:`index`), about :attr:`CHUNK_ENTRIES`
        similarity entries each."""
        b = self.index.shape[1]
        step = max(1, self.CHUNK_ENTRIES // (b * b))
        return [slice(lo, lo + step) for lo in range(0, self.index.shape[0], step)]

    def _chunk_data(self, sl: slice, dtype: torch.dtype = DTYPE) -> Prepared:
        """The prepared data of the batches ``sl`` in slot order, rows ``(m * b_max, .)``
        (contiguous views of the batch-ordered copy), its floating tensors in ``dtype``."""
        b = self.index.shape[1]
        lo, hi = sl.start * b, min(sl.stop, self.index.shape[0]) * b
        return self.param.take(self._batch_data(dtype), slice(lo, hi))

    def _batch_data(self, dtype: torch.dtype) -> Prepared:
        """The batch-ordered prepared data with its floating tensors in ``dtype``: the float64
        original, or a copy made on first use and kept (shared with :meth:`without`)."""
        if dtype == DTYPE:
            return self._bdata
        if dtype not in self._bdata_cast:
            data = self._bdata
            self._bdata_cast[dtype] = type(data)(**{
                f.name: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                for f in fields(data) for v in (getattr(data, f.name),)})
        return self._bdata_cast[dtype]

    def _chunk_const(self, sl: slice, dtype: torch.dtype = DTYPE) -> torch.Tensor:
        """The parametrization's batch constants of the batches ``sl`` in ``dtype`` (a lower-
        precision copy of all of them made on first use and kept, as for the data)."""
        if dtype == DTYPE:
            return self._bconst[sl]
        key = ("const", dtype)
        if key not in self._bdata_cast:
            self._bdata_cast[key] = self._bconst.to(dtype)
        return self._bdata_cast[key][sl]

    def _batched(self, z: torch.Tensor, sl: slice) -> torch.Tensor:
        """Rows ``(m * b_max, e)`` of a chunk as ``(m, b_max, e)``."""
        return z.reshape(-1, self.index.shape[1], z.shape[-1])

    def embeddings(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised embeddings ``u (n, e)`` and ``v (n, e)``."""
        u, v = self.param.embed(theta, self.data)
        return u / u.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)

    def _chunk_similarity(self, theta: torch.Tensor, sl: slice) -> torch.Tensor:
        """``S`` of the batches ``sl``, ``(m, b_max, b_max)`` (see :meth:`similarity`)."""
        if self.param.low_rank_cosines:
            c = self.param.batch_cosines(theta, self._chunk_data(sl), self._chunk_const(sl), self.index.shape[1])
            return torch.exp(self.param.log_scale(theta)) * c
        u, v = self.param.embed(theta, self._chunk_data(sl))
        u, v = u / u.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
        ub, vb = self._batched(u, sl), self._batched(v, sl)
        return torch.exp(self.param.log_scale(theta)) * ub @ vb.transpose(1, 2)

    def _chunk_embeddings_jvp(self, theta: torch.Tensor, v: torch.Tensor, sl: slice):
        """For the batches ``sl``: the batched normalised embeddings ``U``, ``W`` and their
        derivatives ``Udot``, ``Wdot`` along ``v``, each ``(m, b_max, e)``; differentiable in
        ``theta``. Computed in the dtype of ``theta`` (the data is taken in that dtype)."""
        return tuple(self._batched(z, sl) for z in self._normalised_jvp(
            *self.param.embed_jvp(theta, v, self._chunk_data(sl, theta.dtype))))

    def _chunk_cosines_jvp(self, theta: torch.Tensor, v: torch.Tensor, sl: slice):
        """The parametrization's own cosines ``C`` and ``Cdot`` along ``v`` of the batches ``sl``
        (``low_rank_cosines`` only), in the dtype of ``theta``; differentiable in ``theta``."""
        return self.param.batch_cosines(theta, self._chunk_data(sl, theta.dtype), self._chunk_const(sl, theta.dtype),
                                        self.index.shape[1], v=v)

    def _chunk_s_sdot(self, theta: torch.Tensor, v: torch.Tensor, sl: slice):
        """``S`` and ``Sdot`` (derivative along ``v``) of the batches ``sl``, ``(m, b_max, b_max)``
        each, by whichever path the parametrization has (no graph kept: for the directional pass)."""
        sc, td = torch.exp(self.param.log_scale(theta)), self.param.log_scale(v)
        if self.param.low_rank_cosines:
            c, c_dot = self._chunk_cosines_jvp(theta, v, sl)
            s = sc * c
            return s, td * s + sc * c_dot
        return self._s_sdot(sc, td, *self._chunk_embeddings_jvp(theta, v, sl))

    @staticmethod
    def _s_sdot(sc, td, u, w, u_dot, w_dot):
        """``S = s U W^T`` and ``Sdot = t_dot S + s (Udot W^T + U Wdot^T)`` (batched)."""
        wt = w.transpose(1, 2)
        s = (sc * u) @ wt
        return s, td * s + sc * (u_dot @ wt + u @ w_dot.transpose(1, 2))

    def similarity(self, theta: torch.Tensor) -> torch.Tensor:
        """Scaled similarities ``S`` of every batch, shape ``(M, b_max, b_max)``, unmasked.

        ``S[m, i, j] = exp(t) <u_a, v_b>`` with ``a = index[m, i]``, ``b = index[m, j]``; padded
        and removed positions hold meaningless values (see :attr:`keep`).
        """
        return torch.cat([self._chunk_similarity(theta, sl) for sl in self._chunks()])

    def _scatter(self, per_slot: torch.Tensor) -> torch.Tensor:
        """Map a ``(M, b_max)`` tensor of per-slot values to ``(n,)`` in pair order (0 where
        the pair is removed)."""
        out = per_slot.new_zeros(self.n)
        return out.index_put((self.index[self.keep],), per_slot[self.keep])

    # ------------------------------------------------------------------ loss and derivatives
    def _regulariser(self, theta: torch.Tensor):
        return 0.5 * self.lam * ((theta - self.param.theta0) ** 2).sum()

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """``L(theta)`` (or ``L_{-R}``): scalar, ``(1/n) sum Pos_k + (lam/2)||theta-theta0||^2``
        (summed over batch chunks; differentiable, also by :mod:`torch.func`)."""
        data_term = sum(terms.pos(self._chunk_similarity(theta, sl), self.masks.select(sl)).sum()
                        for sl in self._chunks()) / self.n
        if self.lam == 0.0:
            return data_term
        return data_term + self._regulariser(theta)

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """``grad L(theta)``, shape ``(P,)`` (:meth:`loss_and_gradient`)."""
        return self.loss_and_gradient(theta)[1]

    def loss_and_gradient(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``L(theta)`` and ``grad L(theta)`` by reverse mode, one batch chunk at a time (each
        chunk's graph is freed before the next: memory does not grow with ``n``)."""
        th = theta.detach().to(DTYPE).clone().requires_grad_(True)
        value = torch.zeros((), dtype=DTYPE, device=self.device)
        g = torch.zeros_like(th)
        for sl in self._chunks():
            part = terms.pos(self._chunk_similarity(th, sl), self.masks.select(sl)).sum() / self.n
            (gc,) = torch.autograd.grad(part, th)
            value, g = value + part.detach(), g + gc
        if self.lam:
            value = value + self._regulariser(th.detach())
            g = g + self.lam * (th.detach() - self.param.theta0)
        return value, g

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, precision: str = "float64") -> torch.Tensor:
        """Hessian-vector product ``H(theta) v``, shape ``(P,)``, float64, exact (not Gauss-Newton).

        Structured (docs/math.md §8): the batch similarities ``S = s U W^T`` carry all the cost,
        and the loss is a function of ``S`` whose curvature is known in closed form. With
        ``Sdot = J v`` the derivative of ``S`` along ``v`` and ``G = dL/dS``, ``Gdot`` its
        derivative along ``Sdot`` (:func:`ecif.core.terms.hvp_cotangents`),

            ``H v = J^T Gdot + grad_theta <J(theta) v, G>|_(G fixed) + lam v``,

        i.e. the gradient of ``psi(theta) = <S(theta), Gdot> + <Sdot(theta), G>`` with ``G``,
        ``Gdot`` held fixed. The batched part (9 batched matrix products) is written out; only
        the cheap per-pair map ``theta -> (u, w, t)`` and its tangent go through autograd.
        ``psi`` is a sum over batches, so the whole product streams over chunks of about
        :attr:`CHUNK_ENTRIES` similarity entries (each chunk's cotangents and graph freed
        before the next): time linear in ``n``, memory independent of it. Equal to double
        backward through the loss (:meth:`hvp_autograd`) to rounding, both tested against the
        dense autograd Hessian (``python -m ecif.experiments.bench`` prints both as ``hvp_s``,
        ``hvp_autograd_s``).

        Parametrizations with their own batch cosines (``low_rank_cosines``: LoRA heads,
        docs/math.md §21) give ``S = s C`` and ``Sdot`` from low-rank products instead of the
        embeddings; ``psi = s [<C, Gdot + t_dot G> + <Cdot, G>]`` is then differentiated through
        those, and no product at the embedding width runs.

        ``precision="float32"`` (structured product only): each chunk's product runs on float32
        copies of ``theta``, ``v`` and the prepared features (embeddings, similarities,
        softmaxes, cotangents, the reverse pass), and the chunks' contributions are summed in
        float64, as is ``lam v``. About 1e-7 to 1e-6 relative off the float64 product: a cheap
        operator for the inner iterations of :class:`ecif.core.solvers.MixedPrecisionSolver`,
        which corrects it with float64 residuals (docs/math.md §15).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}.")
        if not self.param.structured_hvp:
            if precision != "float64":
                raise ValueError(
                    f"precision={precision!r} needs the structured Hessian-vector product, which "
                    f"{type(self.param).__name__} does not use; use precision='float64'."
                )
            return self.hvp_autograd(theta, v)  # includes the regulariser (it differentiates the loss)
        v = torch.as_tensor(v, dtype=DTYPE, device=self.device)
        low = torch.float32 if precision == "float32" else DTYPE
        th = theta.detach().to(device=self.device, dtype=low).requires_grad_(True)
        v_low = v.to(low)
        hv = torch.zeros_like(v)  # float64 accumulator whatever the precision of the products
        td = float(self.param.log_scale(v))
        if self.param.low_rank_cosines:
            # psi = <S, Gdot> + <Sdot, G> = s [<C, Gdot + td G> + <Cdot, G>] with S = s C
            for sl in self._chunks():
                c, c_dot = self._chunk_cosines_jvp(th, v_low, sl)
                with torch.no_grad():
                    sc = torch.exp(self.param.log_scale(th.detach()))
                    s = sc * c.detach()
                    g, g_dot = terms.hvp_cotangents(s, td * s + sc * c_dot.detach(), self.masks.select(sl), self.n)
                    g_dot.add_(g, alpha=td)
                psi = torch.exp(self.param.log_scale(th)) * ((c * g_dot).sum() + (c_dot * g).sum())
                (hc,) = torch.autograd.grad(psi, th)
                hv += hc
        else:
            for sl in self._chunks():
                parts = self._chunk_embeddings_jvp(th, v_low, sl)
                with torch.no_grad():
                    sc = torch.exp(self.param.log_scale(th.detach()))
                    bars, t_bar = self._hvp_cotangents(sl, sc, td, *(z.detach() for z in parts))
                psi = sum((z * bar).sum() for z, bar in zip(parts, bars)) + self.param.log_scale(th) * t_bar
                (hc,) = torch.autograd.grad(psi, th)
                hv += hc  # a float32 chunk is promoted: the sum over chunks is float64
        return hv + self.lam * v if self.lam else hv

    def _hvp_cotangents(self, sl: slice, sc, td: float, ub, wb, ub_dot, wb_dot):
        """For the batches ``sl`` (the batched ``U``, ``W``, ``Udot``, ``Wdot``, each
        ``(m, b_max, e)``): cotangents of ``psi`` (see :meth:`hvp`) with respect to ``U``, ``W``,
        ``Udot``, ``Wdot`` and ``t``."""
        s, s_dot = self._s_sdot(sc, td, ub, wb, ub_dot, wb_dot)
        g, g_dot = terms.hvp_cotangents(s, s_dot, self.masks.select(sl), self.n)
        t_bar = (s * g_dot).sum() + (s_dot * g).sum()
        a = sc * (g_dot + td * g)
        g = sc * g
        gt, at = g.transpose(1, 2), a.transpose(1, 2)
        bars = (a @ wb + g @ wb_dot, at @ ub + gt @ ub_dot, g @ wb, gt @ ub)
        return bars, t_bar

    @staticmethod
    def _normalised_jvp(u_raw, w_raw, u_raw_dot, w_raw_dot):
        """``u = u_raw / ||u_raw||`` and its tangent ``(u_raw_dot - u <u, u_raw_dot>) / ||u_raw||``
        (rowwise), the same for ``w``."""
        out = []
        for z, z_dot in ((u_raw, u_raw_dot), (w_raw, w_raw_dot)):
            rho = z.norm(dim=1, keepdim=True)
            unit = z / rho
            out.append((unit, (z_dot - unit * (unit * z_dot).sum(dim=1, keepdim=True)) / rho))
        (u, u_dot), (w, w_dot) = out
        return u, w, u_dot, w_dot

    def hvp_autograd(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``H(theta) v`` by double backward through :meth:`loss` (the reference for :meth:`hvp`)."""
        th = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(th), th, create_graph=True)
        (hv,) = torch.autograd.grad(g @ torch.as_tensor(v, dtype=DTYPE, device=self.device), th)
        return hv

    def hessian(self, theta: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
        """Dense Hessian ``(P, P)``; use for ``P`` up to about 10^4.

        Reverse-over-reverse in chunks of ``chunk_size`` rows: 2-3x faster here than building
        all ``P`` tangents at once, and memory stays at ``chunk_size`` copies of the graph.
        """
        h = jacrev(grad(self.loss), chunk_size=chunk_size)(theta)
        return 0.5 * (h + h.T)

    # ------------------------------------------------------------------ per-pair terms
    def pair_terms(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pair terms ``Pos_k``, ``Neg_k``, ``NegExact_k``, each of shape ``(n,)`` (0 for
        removed pairs). No ``1/n`` factor."""
        per_slot = terms.slot_terms(self.similarity(theta), self.masks)
        return {name: self._scatter(per_slot[name]) for name in TERMS}

    def directional_terms(self, theta: torch.Tensor, direction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Directional derivatives ``grad T_k(theta)^T h`` for every pair and every term.

        One forward pass gives ``S`` and ``Sdot``, the derivative of the batch similarities along
        ``h`` (the parametrization's ``batch_cosines`` or ``embed_jvp``), streamed over batch chunks; the per-pair derivatives follow from ``S`` and ``Sdot`` in closed form
        (docs/math.md §7, :func:`ecif.core.terms.directional_terms`). No per-pair backward pass.

        Returns a dict of ``(n,)`` tensors keyed by ``"pos"``, ``"neg"``, ``"negexact"``
        (no ``1/n`` factor; 0 for removed pairs).
        """
        direction = torch.as_tensor(direction, dtype=DTYPE, device=self.device)
        if direction.shape != (self.n_params,):
            raise ValueError(f"direction must have shape ({self.n_params},), got {tuple(direction.shape)}.")
        theta = torch.as_tensor(theta, dtype=DTYPE, device=self.device)
        per_slot = {name: [] for name in TERMS}
        with torch.no_grad():
            for sl in self._chunks():  # streamed over batch chunks, as in :meth:`hvp`
                s, s_dot = self._chunk_s_sdot(theta, direction, sl)
                d = terms.directional_terms(s, s_dot, self.masks.select(sl))
                for name in TERMS:
                    per_slot[name].append(d[name])
        return {name: self._scatter(torch.cat(per_slot[name])) for name in TERMS}

    def pair_gradients(self, theta: torch.Tensor, terms=("pos", "neg"), indices=None,
                       chunk_size: int | None = 64) -> torch.Tensor:
        """Explicit per-pair gradients ``grad [sum of terms]_k(theta)`` as a ``(len(indices), P)``
        matrix (no ``1/n``). Memory ``len(indices) * P``: use it for modest sets of pairs (e.g.
        relative influence of a few hundred pairs, tests); scoring every pair uses
        :meth:`directional_terms` instead."""
        idx = (torch.arange(self.n, device=self.device) if indices is None
               else torch.as_tensor(indices if isinstance(indices, torch.Tensor) else np.asarray(indices),
                                 device=self.device).long())
        unknown = set(terms) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown term(s) {sorted(unknown)}; choose from {TERMS}.")

        def selected(th):
            t = self.pair_terms(th)
            return sum(t[name] for name in terms)[idx]

        return jacrev(selected, chunk_size=chunk_size)(theta)
