"""Projected influence: the influence solve in a small random subspace of the adapter parameters
(docs/math.md §17).

For many adapter parameters (``P`` of 10^5 and more: several adapted blocks, all targets, rank 4
to 8) a conjugate-gradient solve with the exact Hessian needs many Hessian-vector products, each a
double backward pass through the adapted blocks. :class:`ProjectedInfluence` replaces the solve
by one in a ``K``-dimensional subspace spanned by the columns of a seeded random matrix
``R (P, K)``:

    ``IS(k) ~ (1/n) (R^T grad L_val)^T C^-1 (R^T grad T_k)``,
    ``C = R^T (H_c + (lam + mu) I) R``  (``K x K``, dense),

with ``H_c`` the data term's curvature (below), ``lam`` the objective's L2 pull, ``mu`` the
damping and ``T_k`` the variant's gradient term (``Pos_k``, ``Neg_k``, ``Pos_k + Neg_k`` or
``Pos_k + NegExact_k``; for ``newton`` this is the pair's exact removal gradient, its positive
terms plus its whole negative role in its batch, docs/math.md §4-§5). It is the Galerkin
restriction of ``H^-1`` to the span of ``R``: the scores depend only on that span, not on the
scaling of ``R``, and with ``R`` of full rank and ``H_c`` the exact Hessian they equal the exact
scores.

**Projection** (:class:`KroneckerProjection`): block-diagonal over the parametrization's factors
(each LoRA factor ``A (r, d_in)`` or ``B (d_out, r)`` of every adapted matrix, the projection
adapters, the log-scale). A factor ``F (a, b)`` with gradient ``G (a, b)`` is projected on both
sides, ``L^T G M`` with Gaussian ``L (a, k_a)``, ``M (b, k_b)``, so each projected coordinate is
the gradient along a rank-one direction ``L[:, i] M[:, j]^T``. The small side of a LoRA factor
(its rank) is kept whole (``L = I``) and the large side gets ``k // r`` columns; a factor with at
most ``k`` entries is kept whole (``R`` is the identity there). ``K`` is the sum of the factors'
dimensions.

**Projected per-pair gradients**: ``R^T grad T_k`` for all pairs and all three terms by forward
mode, one tangent per column of ``R`` (vectorised over a chunk of columns with ``torch.func``):
the derivative of every batch similarity along the column, then the closed-form per-pair
derivatives of docs/math.md §7. No per-pair backward pass and no ``(n, P)`` matrix; cost: ``K``
forward-mode passes over the pairs (the gradient ``g = sum_t delta_t x_t^T`` of a linear layer
is never formed).

**Curvature** ``H_c`` (``curvature=``):

* ``"gauss_newton"`` (default): ``J^T (grad^2_S l) J`` restricted to the span, with ``J`` the
  Jacobian of the batch similarities ``S`` and ``l(S) = (1/n) sum_k Pos_k`` convex in ``S``; from
  the same tangents ``Sdot_i = J R_i`` in closed form, ``C_ij = (1/n) sum over batches
  [sum_ab (P + Q)_ab Sdot_i,ab Sdot_j,ab - sum_a r_i,a r_j,a - sum_b c_i,b c_j,b]`` (``r``, ``c``
  as in §7). Positive semi-definite; it drops the part of the Hessian that comes from the
  curvature of the map ``theta -> S`` (the part that can make the block-mode loss non-convex).
* ``"fisher"``: the empirical Fisher of the data term, ``(1/n) sum_k g_k g_k^T`` with
  ``g_k = R^T grad Pos_k``; free once the projected gradients exist.
* ``"hessian"``: the exact ``R^T H R`` by ``K`` Hessian-vector products (as expensive as ``K``
  CG iterations; the reference the other two are checked against).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch.func import vmap

from ecif.core import terms
from ecif.core.objective import ContrastiveObjective
from ecif.core.terms import DTYPE, TERMS, VARIANT_TERMS, VARIANTS

__all__ = ["CURVATURES", "Factor", "KroneckerProjection", "ProjectedInfluence", "factor_layout"]

#: The curvatures the projected solve can use (see the module docstring).
CURVATURES = ("gauss_newton", "fisher", "hessian")


@dataclass(frozen=True)
class Factor:
    """One matrix-shaped slice ``theta[lo:hi]`` of the parameters, read row-major as ``(rows, cols)``."""

    name: str
    lo: int
    hi: int
    rows: int
    cols: int


def factor_layout(param) -> list[Factor]:
    """The factors of a parametrization in ``theta`` order, covering ``[0, P)``: the named LoRA
    factors of :class:`~ecif.core.blocks.BlockLoRA`, the four factors of
    :class:`~ecif.core.heads.LoRAHeads`, else one flat factor ``(1, P - 1)``; the log-scale
    ``t`` (last entry) is a ``(1, 1)`` factor."""
    P = int(param.n_params)
    slices = getattr(param, "_slices", None)
    if slices:
        out = [Factor(name, lo, hi, int(s[0]), int(s[1])) for name, (lo, hi, s) in slices.items()]
    elif hasattr(param, "_offsets") and hasattr(param, "rank"):
        r, e = param.rank, param.width
        shapes = [("img.A", (r, param.d_img)), ("img.B", (e, r)), ("txt.A", (r, param.d_txt)), ("txt.B", (e, r))]
        off = param._offsets
        out = [Factor(nm, int(off[j]), int(off[j + 1]), *s) for j, (nm, s) in enumerate(shapes)]
    else:
        out = [Factor("theta", 0, P - 1, 1, P - 1)] if P > 1 else []
    out.append(Factor("log_scale", P - 1, P, 1, 1))
    edges = [f.lo for f in out] + [out[-1].hi]
    if edges[0] != 0 or edges[-1] != P or any(f.hi != g.lo for f, g in zip(out, out[1:])) or any(
            f.hi - f.lo != f.rows * f.cols for f in out):
        raise ValueError("the parametrization's factor layout does not tile theta; cannot project it.")
    return out


class KroneckerProjection:
    """A block-diagonal random projection ``R (P, K)``, one Kronecker block per factor.

    Factor ``F (a, b)``: with ``k`` the dimension per factor, the block is ``L kron M``
    (``L (a, k_a)``, ``M (b, k_b)``; a projected gradient ``G`` is ``L^T G M``, flattened
    row-major). ``a b <= k``: ``L = I``, ``M = I`` (kept whole). Else with ``s = min(a, b)``:
    ``s <= k``: the small side is the identity and the large side gets ``k // s`` Gaussian
    columns; ``s > k``: both sides get ``floor(sqrt(k))`` Gaussian columns. Gaussian entries are
    ``N(0, 1/columns)``, drawn on the CPU from ``seed`` factor by factor (then moved to
    ``device``): the same ``R`` on every device.
    """

    def __init__(self, layout: list[Factor], k: int, seed: int = 0, device=None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"the projection dimension k must be an integer >= 1 (per factor), got {k!r}.")
        self.layout, self.k = list(layout), int(k)
        self.n_params = self.layout[-1].hi
        dev = torch.device("cpu") if device is None else torch.device(device)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.left, self.right, self.dims = [], [], []
        for f in self.layout:
            a, b = f.rows, f.cols
            if a * b <= k:
                ka, kb = a, b
            elif min(a, b) <= k:
                ka, kb = (a, k // a) if a <= b else (k // b, b)
            else:
                ka = kb = max(1, math.isqrt(k))
            lm = None if ka == a else (torch.randn(a, ka, generator=gen, dtype=DTYPE, device="cpu") / ka ** 0.5).to(dev)
            rm = None if kb == b else (torch.randn(b, kb, generator=gen, dtype=DTYPE, device="cpu") / kb ** 0.5).to(dev)
            self.left.append(lm)
            self.right.append(rm)
            self.dims.append(ka * kb)
        self.offsets = [0]
        for d in self.dims:
            self.offsets.append(self.offsets[-1] + d)
        self.device = dev

    @property
    def dim(self) -> int:
        """``K``, the number of projected coordinates."""
        return self.offsets[-1]

    def _shape(self, j: int) -> tuple[int, int]:
        f, lm, rm = self.layout[j], self.left[j], self.right[j]
        return (f.rows if lm is None else lm.shape[1]), (f.cols if rm is None else rm.shape[1])

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """``R^T g`` for ``g (P,)`` or ``(P, m)``: ``(K,)`` or ``(K, m)``."""
        g = torch.as_tensor(g, dtype=DTYPE, device=self.device)
        if g.shape[0] != self.n_params:
            raise ValueError(f"g must have {self.n_params} rows (the parameters), got shape {tuple(g.shape)}.")
        cols = g.reshape(self.n_params, -1)
        out = []
        for f, lm, rm in zip(self.layout, self.left, self.right):
            G = cols[f.lo:f.hi].T.reshape(-1, f.rows, f.cols)
            if lm is not None:
                G = lm.T @ G
            if rm is not None:
                G = G @ rm
            out.append(G.reshape(G.shape[0], -1).T)
        res = torch.cat(out)
        return res.reshape(-1) if g.ndim == 1 else res

    def directions(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start..stop-1`` of ``R`` as the rows of a ``(stop - start, P)`` matrix."""
        out = torch.zeros(stop - start, self.n_params, dtype=DTYPE, device=self.device)
        for j, f in enumerate(self.layout):
            lo, hi = max(start, self.offsets[j]), min(stop, self.offsets[j + 1])
            if lo >= hi:
                continue
            ka, kb = self._shape(j)
            c = torch.arange(lo, hi, device=self.device) - self.offsets[j]
            eye_a = torch.eye(f.rows, dtype=DTYPE, device=self.device)
            eye_b = torch.eye(f.cols, dtype=DTYPE, device=self.device)
            lcol = (eye_a if self.left[j] is None else self.left[j])[:, c // kb]  # (a, m)
            rcol = (eye_b if self.right[j] is None else self.right[j])[:, c % kb]  # (b, m)
            out[lo - start:hi - start, f.lo:f.hi] = (lcol.T[:, :, None] * rcol.T[:, None, :]).reshape(hi - lo, -1)
        return out

    def gram(self) -> torch.Tensor:
        """``R^T R (K, K)``: block-diagonal, ``(L^T L) kron (M^T M)`` per factor."""
        blocks = []
        for f, lm, rm in zip(self.layout, self.left, self.right):
            ga = torch.eye(f.rows, dtype=DTYPE, device=self.device) if lm is None else lm.T @ lm
            gb = torch.eye(f.cols, dtype=DTYPE, device=self.device) if rm is None else rm.T @ rm
            blocks.append(torch.kron(ga, gb))
        return torch.block_diag(*blocks)


class ProjectedInfluence:
    """Influence scores of every pair from a solve in the span of a random projection.

    Parameters
    ----------
    objective:
        The training objective ``L`` at its optimum (its ``n`` is the ``1/n`` of every score).
    theta_hat:
        The fitted optimum ``(P,)``.
    k:
        Projected dimension per factor (see :class:`KroneckerProjection`); ``K`` in all
        (:attr:`dim`). Larger: closer to the exact solve, costlier (``K`` forward-mode passes).
    curvature:
        ``"gauss_newton"``, ``"fisher"`` or ``"hessian"`` (module docstring).
    damping:
        ``mu >= 0`` added as ``mu R^T R``, as ``(H + mu I)`` in :class:`~ecif.core.influence.ECIF`.
    seed:
        Draws the projection.
    chunk:
        Columns of ``R`` pushed through forward mode at once (memory ``chunk`` times a forward
        pass over a batch group).

    Everything is computed in the constructor: the projected per-pair gradients of the three
    terms (``(n, K)`` each, no ``1/n``: :attr:`pair_gradients`) and the factorised ``C``;
    :meth:`influence_scores` then costs one projection of the validation gradient.
    """

    #: Batch groups hold about this many (direction x similarity entry) values at once.
    GROUP_ENTRIES = 2**24

    def __init__(self, objective: ContrastiveObjective, theta_hat: torch.Tensor, k: int = 64,
                 curvature: str = "gauss_newton", damping: float = 0.0, seed: int = 0, chunk: int = 8):
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}.")
        damping = float(damping)
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}.")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}.")
        self.objective, self.n = objective, objective.n
        self.theta_hat = objective.param.check_theta(theta_hat)
        self.curvature, self.damping, self.chunk = curvature, damping, chunk
        self.projection = KroneckerProjection(factor_layout(objective.param), k, seed, self.theta_hat.device)
        K = self.projection.dim
        grads, gn = self._forward_passes()
        self.pair_gradients = grads
        gram = self.projection.gram()
        if curvature == "gauss_newton":
            c = gn + objective.lam * gram
        elif curvature == "fisher":
            g = grads["pos"]
            c = g.T @ g / self.n + objective.lam * gram
        else:
            c = self._projected_hessian()
        c = 0.5 * (c + c.T) + damping * gram
        self.matrix = c
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(c)
        lo, hi = float(self.eigenvalues[0]), float(self.eigenvalues[-1])
        self.report = {"solver": "projected", "curvature": curvature, "k": int(k), "dim": K,
                       "n_params": self.projection.n_params, "damping": damping,
                       "min_eigenvalue": lo, "max_eigenvalue": hi, "positive_definite": lo > 0}
        if lo <= 0:
            warnings.warn(
                f"the projected curvature is not positive definite (smallest eigenvalue {lo:.3e}): raise the "
                "damping, or use curvature='gauss_newton' (positive semi-definite) with lam > 0.",
                RuntimeWarning, stacklevel=2)

    @property
    def dim(self) -> int:
        """``K``, the dimension of the projected space."""
        return self.projection.dim

    # ------------------------------------------------------------------ forward passes
    def _groups(self) -> list[slice]:
        """Slices of batches with about :attr:`GROUP_ENTRIES` / ``K`` similarity entries each."""
        obj = self.objective
        b = obj.index.shape[1]
        step = max(1, self.GROUP_ENTRIES // (self.projection.dim * b * b))
        return [slice(lo, lo + step) for lo in range(0, obj.index.shape[0], step)]

    def _forward_passes(self):
        """Projected per-pair gradients of every term, ``(n, K)`` each, and the projected
        Gauss-Newton matrix ``R^T J^T grad^2_S l J R`` (``K x K``, data term only)."""
        obj, theta, proj = self.objective, self.theta_hat, self.projection
        K, n = proj.dim, self.n
        cols = [(lo, min(lo + self.chunk, K)) for lo in range(0, K, self.chunk)]
        dirs = [proj.directions(lo, hi) for lo, hi in cols]
        t_dot = torch.cat([d[:, -1] for d in dirs])  # derivative of the log-scale along each column
        grads = {name: torch.zeros(n, K, dtype=DTYPE, device=theta.device) for name in TERMS}
        gn = torch.zeros(K, K, dtype=DTYPE, device=theta.device)
        sc = torch.exp(obj.param.log_scale(theta))
        b = obj.index.shape[1]
        with torch.no_grad():
            for sl in self._groups():
                # rows of this batch group in slot order: (m b, .) embeddings and K tangents
                u, w, _, _ = obj._chunk_embeddings_jvp(theta, torch.zeros_like(theta), sl)
                tang = [vmap(lambda v: obj._chunk_embeddings_jvp(theta, v, sl)[2:])(d) for d in dirs]
                u_dot = torch.cat([t[0] for t in tang])  # (K, m, b, e)
                w_dot = torch.cat([t[1] for t in tang])
                m = u.shape[0]
                # S = s U W^T and, per column, Sdot = t_dot S + s (Udot W^T + U Wdot^T): (K, m, b, b)
                s = (sc * u) @ w.transpose(1, 2)
                s_dot = t_dot[:, None, None, None] * s + sc * (u_dot @ w.transpose(1, 2) + u @ w_dot.transpose(-1, -2))
                mk = obj.masks.select(sl)
                folded = terms.Masks(mk.keep.repeat(K, 1), mk.pairs.repeat(K, 1, 1), mk.offdiag.repeat(K, 1, 1))
                d = terms.directional_terms(s.expand(K, m, b, b).reshape(K * m, b, b), s_dot.reshape(K * m, b, b),
                                            folded)
                keep = mk.keep
                rows = obj.index[sl][keep]
                for name in TERMS:
                    grads[name][rows] = d[name].reshape(K, m, b)[:, keep].T
                P, Q = terms.softmaxes(s, mk)
                r = d["r"].reshape(K, m, b)
                c = d["c"].reshape(K, m, b)
                gn += (torch.einsum("kmab,lmab->kl", s_dot * (P + Q), s_dot)
                       - torch.einsum("kma,lma->kl", r, r) - torch.einsum("kmb,lmb->kl", c, c)) / n
        return grads, 0.5 * (gn + gn.T)

    def _projected_hessian(self) -> torch.Tensor:
        """``R^T H R`` (regulariser included) by one Hessian-vector product per column."""
        obj, proj = self.objective, self.projection
        K = proj.dim
        cols = []
        for lo in range(0, K, self.chunk):
            for v in proj.directions(lo, min(lo + self.chunk, K)):
                cols.append(proj.project(obj.hvp(self.theta_hat, v)))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------------ public API
    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``C^-1 b`` for projected vectors ``b (K,)`` or ``(K, m)``."""
        b = torch.as_tensor(b, dtype=DTYPE, device=self.theta_hat.device)
        if b.shape[0] != self.dim:
            raise ValueError(f"b must have {self.dim} rows (the projected dimension), got shape {tuple(b.shape)}.")
        v = self.eigenvectors
        coef = v.T @ b
        coef = coef / (self.eigenvalues if b.ndim == 1 else self.eigenvalues[:, None])
        return v @ coef

    def influence_scores(self, val_gradient: torch.Tensor, variants=VARIANTS) -> dict[str, torch.Tensor]:
        """``IS(k) ~ (1/n) (R^T grad T_k)^T C^-1 R^T grad L_val`` for every pair, per variant:
        dict of ``(n,)`` tensors, the same signs and scaling as
        :meth:`ecif.core.influence.ECIF.influence_scores` (``IS < 0``: harmful)."""
        val_gradient = torch.as_tensor(val_gradient, dtype=DTYPE, device=self.theta_hat.device)
        if val_gradient.shape != (self.projection.n_params,):
            raise ValueError(
                f"val_gradient must have shape ({self.projection.n_params},), got {tuple(val_gradient.shape)}.")
        for v in variants:
            if v not in VARIANT_TERMS:
                raise ValueError(f"unknown variant {v!r}; choose one of {VARIANTS}.")
        h = self.solve(self.projection.project(val_gradient))
        d = {name: g @ h for name, g in self.pair_gradients.items()}
        return {v: sum(d[t] for t in VARIANT_TERMS[v]) / self.n for v in variants}
