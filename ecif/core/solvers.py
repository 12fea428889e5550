"""Inverse-Hessian solvers: ``x = (H + mu I)^-1 b``.

Two solvers with one interface (``solve(b)`` and a ``report`` dict):

* :class:`DenseSolver`: eigendecomposition of the dense Hessian (parameter counts up to about
  10^4). Reports the smallest and largest eigenvalue and warns when ``H + mu I`` is not positive
  definite (a solve along a negative or zero direction gives a meaningless influence).
* :class:`CGSolver`: matrix-free conjugate gradient on Hessian-vector products, any size.
  Reports iterations and relative residual; by default raises :class:`SolverError` when it does
  not reach the requested tolerance or meets negative curvature.

Damping ``mu >= 0`` shrinks every component of the solution along an eigenvector with eigenvalue
``l`` by ``l / (l + mu)``: it stabilises directions the data barely constrain (LoRA's rotation
symmetries, a flat logit scale) at the price of a biased, smaller estimate.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from ecif.core.terms import DTYPE, device_of

__all__ = ["SolverError", "DenseSolver", "CGSolver", "lanczos_extremes", "make_solver"]


class SolverError(RuntimeError):
    """An inverse-Hessian solve failed (no convergence, negative curvature)."""


def _check_damping(damping: float) -> float:
    damping = float(damping)
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    return damping


class DenseSolver:
    """``(H + mu I)^-1`` from the eigendecomposition of a dense symmetric Hessian ``(P, P)``."""

    def __init__(self, hessian: torch.Tensor, damping: float = 0.0):
        h = torch.as_tensor(hessian, dtype=DTYPE, device=device_of(hessian))
        if h.ndim != 2 or h.shape[0] != h.shape[1]:
            raise ValueError(f"the Hessian must be a square matrix, got shape {tuple(h.shape)}.")
        if not torch.isfinite(h).all():
            raise ValueError("the Hessian contains NaN or Inf; check the fit and the features.")
        self.damping = _check_damping(damping)
        asym = (h - h.T).abs().max() / h.abs().max().clamp_min(1e-300)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(0.5 * (h + h.T))
        lo, hi = float(self.eigenvalues[0]), float(self.eigenvalues[-1])
        self.report = {
            "solver": "dense",
            "damping": self.damping,
            "min_eigenvalue": lo,
            "max_eigenvalue": hi,
            "condition_number": (hi + self.damping) / (lo + self.damping) if lo + self.damping > 0 else float("inf"),
            "asymmetry": float(asym),
            "positive_definite": lo + self.damping > 0,
        }
        if lo + self.damping <= 0:
            warnings.warn(
                f"H + mu I is not positive definite (smallest eigenvalue {lo:.3e}, damping "
                f"{self.damping:.3e}): influence along those directions is meaningless. Fit to "
                "convergence, raise the regularisation lam, or set damping > "
                f"{max(-lo, 0):.3e}.",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def n_params(self) -> int:
        return self.eigenvalues.shape[0]

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + mu I)^-1 b`` for ``b`` of shape ``(P,)`` or ``(P, k)``."""
        b = torch.as_tensor(b, dtype=DTYPE, device=self.eigenvectors.device)
        if b.shape[0] != self.n_params:
            raise ValueError(f"b must have {self.n_params} rows, got shape {tuple(b.shape)}.")
        v = self.eigenvectors
        coef = v.T @ b
        lam = self.eigenvalues + self.damping
        coef = coef / (lam if b.ndim == 1 else lam[:, None])
        return v @ coef

    def inverse_norms(self, g: torch.Tensor) -> torch.Tensor:
        """``||(H + mu I)^-1 g_k||`` for the rows ``g_k`` of ``g (k, P)``, without forming the
        solutions one by one."""
        coef = (g @ self.eigenvectors) / (self.eigenvalues + self.damping)
        return coef.norm(dim=1)


class CGSolver:
    """Conjugate gradient on ``v -> H v + mu v``, matrix-free.

    Parameters
    ----------
    hvp:
        Callable ``v (P,) -> H v (P,)``.
    n_params:
        ``P``.
    damping:
        ``mu >= 0``.
    rtol:
        Stop when ``||b - (H + mu I) x|| <= rtol ||b||``.
    max_iter:
        Iteration cap (default ``max(100, 2 P)``, capped at 5000).
    strict:
        Raise :class:`SolverError` on non-convergence or negative curvature (default); with
        ``strict=False`` warn and record it in :attr:`report` instead.
    """

    def __init__(self, hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, damping: float = 0.0,
                 rtol: float = 1e-10, max_iter: int | None = None, strict: bool = True):
        self.hvp, self.n_params = hvp, int(n_params)
        self.damping = _check_damping(damping)
        if not (0 < rtol < 1):
            raise ValueError(f"rtol must lie in (0, 1), got {rtol}.")
        self.rtol, self.strict = float(rtol), strict
        self.max_iter = int(max_iter) if max_iter is not None else min(max(100, 2 * self.n_params), 5000)
        self.report: dict = {"solver": "cg", "damping": self.damping, "solves": []}

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        out = self.hvp(v)
        return out + self.damping * v if self.damping else out

    def _fail(self, msg: str) -> None:
        if self.strict:
            raise SolverError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _solve_one(self, b: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        bnorm = float(b.norm())
        if bnorm == 0.0:
            self.report["solves"].append({"iterations": 0, "relative_residual": 0.0, "converged": True})
            return x
        rs = float(r @ r)
        min_curv = float("inf")
        it = 0
        converged = False
        for it in range(1, self.max_iter + 1):
            ap = self._apply(p)
            pap = float(p @ ap)
            curv = pap / float(p @ p)
            min_curv = min(min_curv, curv)
            if pap <= 0:
                self.report["solves"].append({"iterations": it, "relative_residual": rs ** 0.5 / bnorm,
                                              "converged": False, "min_curvature": min_curv})
                self._fail(
                    f"CG met non-positive curvature {curv:.3e} at iteration {it}: H + mu I is not "
                    "positive definite. Raise the damping or the regularisation, or check the fit."
                )
                return x
            alpha = rs / pap
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = float(r @ r)
            if rs_new ** 0.5 <= self.rtol * bnorm:
                converged = True
                rs = rs_new
                break
            p = r + (rs_new / rs) * p
            rs = rs_new
        # the recursive residual drifts; report the true one
        true_res = float((b - self._apply(x)).norm()) / bnorm
        self.report["solves"].append({"iterations": it, "relative_residual": true_res,
                                      "converged": converged, "min_curvature": min_curv})
        self.report.update(iterations=it, relative_residual=true_res)
        if not converged:
            self._fail(
                f"CG did not converge: relative residual {true_res:.3e} > rtol {self.rtol:.1e} after "
                f"{it} iterations. Raise max_iter, add damping, or use the dense solver."
            )
        return x

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + mu I)^-1 b`` for ``b`` of shape ``(P,)`` or ``(P, k)`` (columns solved in turn)."""
        b = torch.as_tensor(b, dtype=DTYPE, device=device_of(b))
        if b.shape[0] != self.n_params:
            raise ValueError(f"b must have {self.n_params} rows, got shape {tuple(b.shape)}.")
        if b.ndim == 1:
            return self._solve_one(b)
        return torch.stack([self._solve_one(b[:, j]) for j in range(b.shape[1])], dim=1)


def make_solver(objective, theta: torch.Tensor, kind: str = "auto", damping: float = 0.0, **cg_kwargs):
    """Build a solver for ``H = grad^2 objective.loss(theta)``.

    ``kind``: ``"dense"``, ``"cg"``, or ``"auto"`` (dense when ``P <= 4000``, else CG).
    """
    if kind == "auto":
        kind = "dense" if objective.n_params <= 4000 else "cg"
    if kind == "dense":
        if objective.n_params > 20000:
            raise ValueError(
                f"a dense Hessian of {objective.n_params} parameters needs "
                f"{objective.n_params ** 2 * 8 / 2**30:.1f} GiB; use kind='cg'."
            )
        return DenseSolver(objective.hessian(theta), damping)
    if kind == "cg":
        return CGSolver(lambda v: objective.hvp(theta, v), objective.n_params, damping, **cg_kwargs)
    raise ValueError(f"unknown solver kind {kind!r}; choose 'dense', 'cg' or 'auto'.")


def lanczos_extremes(hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, iters: int = 60, seed: int = 0,
                     device=None) -> tuple[float, float]:
    """Smallest and largest eigenvalue of the symmetric operator ``hvp`` (``v (P,) -> H v``),
    estimated by ``iters`` Lanczos steps with full reorthogonalisation from a seeded random start.

    The Ritz values bracket inwards: the returned smallest is >= the true smallest and the
    largest <= the true largest, both converging fast for well-separated extremes. Costs ``iters``
    Hessian-vector products and ``iters x P`` floats; for when a dense Hessian is too expensive
    (block mode), where a dense eigendecomposition is the reference (a test compares them).
    """
    k = int(min(iters, n_params))
    if k < 1:
        raise ValueError(f"iters must be >= 1, got {iters}.")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n_params, generator=gen, dtype=DTYPE, device="cpu").to(device or "cpu")
    q = q / q.norm()
    basis = [q]
    alphas, betas = [], []
    for j in range(k):
        w = hvp(basis[j])
        alphas.append(float(w @ basis[j]))
        qs = torch.stack(basis)
        w = w - qs.T @ (qs @ w)  # full reorthogonalisation (twice: stable in float64)
        w = w - qs.T @ (qs @ w)
        beta = float(w.norm())
        if j == k - 1 or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis.append(w / beta)
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=DTYPE))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=DTYPE)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(t)
    return float(ritz[0]), float(ritz[-1])
