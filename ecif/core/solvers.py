"""Inverse-Hessian solvers: ``x = (H + mu I)^-1 b``.

Solvers with one interface (``solve(b)`` and a ``report`` dict):

* :class:`DenseSolver`: eigendecomposition of the dense Hessian (parameter counts up to about
  10^4). Reports the smallest and largest eigenvalue and warns when ``H + mu I`` is not positive
  definite (a solve along a negative or zero direction gives a meaningless influence).
* :class:`CGSolver`: matrix-free conjugate gradient on Hessian-vector products, any size.
  Reports iterations and relative residual; by default raises :class:`SolverError` when it does
  not reach the requested tolerance or meets negative curvature. Optionally preconditioned by
  :class:`SpectralPreconditioner`, the extreme eigenpairs of a cheap stand-in Hessian (that of
  a subsample of the batches): the answer is the same, the number of full Hessian-vector
  products smaller.
* :class:`MixedPrecisionSolver`: CG on float32 Hessian-vector products, corrected by float64
  residuals (iterative refinement) to the same tolerance; most products are the cheap ones.

Damping ``mu >= 0`` shrinks every component of the solution along an eigenvector with eigenvalue
``l`` by ``l / (l + mu)``: it stabilises directions the data barely constrain (LoRA's rotation
symmetries, a flat logit scale) at the price of a biased, smaller estimate.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import torch

from ecif.core.terms import DTYPE, device_of

__all__ = ["SolverError", "DenseSolver", "CGSolver", "MixedPrecisionSolver", "SpectralPreconditioner", "lanczos", "lanczos_extremes",
           "make_solver"]


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


class _IterativeSolver:
    """What :class:`CGSolver` and :class:`MixedPrecisionSolver` share: the damped product that
    counts itself in ``report[self._counter]``, and the failure rule (raise :class:`SolverError`
    when ``strict``, else warn)."""

    _counter = "products"

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        self.report[self._counter] += 1
        out = self.hvp(v)
        return out + self.damping * v if self.damping else out

    def _fail(self, msg: str) -> None:
        if self.strict:
            raise SolverError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


class CGSolver(_IterativeSolver):
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
    preconditioner:
        Optional callable ``r (P,) -> M^-1 r`` for a symmetric positive definite ``M``
        approximating ``H + mu I`` (preconditioned CG). It changes the path, not the answer:
        the stopping test is on the residual of the original system, ``||b - (H + mu I) x||``.
    progress:
        ``True``: a line on ``sys.stderr`` every ``progress_every`` iterations (iteration,
        relative residual); a callable receives ``(iteration, relative_residual)`` instead.
    materialise:
        For a matrix of right-hand sides ``(P, k)``: when the first column's iteration count
        times the remaining ``k - 1`` columns exceeds ``P``, forming ``H`` from ``P`` products
        with the unit vectors is cheaper than the remaining solves, so the solver does that
        once, keeps the :class:`DenseSolver` and answers this and every later solve from it
        (``report["materialised"]``). The answer is the exact solve, within the CG tolerance of
        the column-by-column path. ``False`` always iterates.
    final_residual:
        Recompute the residual ``b - (H + mu I) x`` at the end with one more product (default)
        and report that; ``False`` reports the recursive residual and saves the product (when
        the caller computes the true residual itself, as :class:`MixedPrecisionSolver` does).

    ``report["products"]`` counts the calls of ``hvp`` over all solves.
    """

    def __init__(self, hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, damping: float = 0.0,
                 rtol: float = 1e-10, max_iter: int | None = None, strict: bool = True,
                 preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None, progress=None,
                 progress_every: int = 10, final_residual: bool = True, materialise: bool = True):
        self.hvp, self.n_params, self.materialise = hvp, int(n_params), bool(materialise)
        self._dense: DenseSolver | None = None
        self.preconditioner, self.progress, self.progress_every = preconditioner, progress, int(progress_every)
        self.damping = _check_damping(damping)
        if not (0 < rtol < 1):
            raise ValueError(f"rtol must lie in (0, 1), got {rtol}.")
        self.rtol, self.strict, self.final_residual = float(rtol), strict, bool(final_residual)
        self.max_iter = int(max_iter) if max_iter is not None else min(max(100, 2 * self.n_params), 5000)
        self.report: dict = {"solver": "cg", "damping": self.damping, "solves": [], "products": 0}

    def _precondition(self, r: torch.Tensor) -> torch.Tensor:
        return r.clone() if self.preconditioner is None else self.preconditioner(r)

    def _tick(self, it: int, rel: float) -> None:
        if not self.progress or it % self.progress_every:
            return
        if callable(self.progress):
            self.progress(it, rel)
        else:
            print(f"CG iteration {it}: relative residual {rel:.2e} (rtol {self.rtol:.0e})", file=sys.stderr,
                  flush=True)

    def _solve_one(self, b: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(b)
        r = b.clone()
        z = self._precondition(r)
        p = z.clone()
        bnorm = float(b.norm())
        if bnorm == 0.0:
            self.report["solves"].append({"iterations": 0, "relative_residual": 0.0, "converged": True})
            return x
        rs = float(r @ z)  # r^T M^-1 r
        min_curv = float("inf")
        it = 0
        converged = False
        for it in range(1, self.max_iter + 1):
            ap = self._apply(p)
            pap = float(p @ ap)
            curv = pap / float(p @ p)
            min_curv = min(min_curv, curv)
            if pap <= 0:
                self.report["solves"].append({"iterations": it, "relative_residual": float(r.norm()) / bnorm,
                                              "converged": False, "min_curvature": min_curv})
                self._fail(
                    f"CG met non-positive curvature {curv:.3e} at iteration {it}: H + mu I is not "
                    "positive definite. Raise the damping or the regularisation, or check the fit."
                )
                return x
            alpha = rs / pap
            x = x + alpha * p
            r = r - alpha * ap
            rnorm = float(r.norm())
            self._tick(it, rnorm / bnorm)
            if rnorm <= self.rtol * bnorm:
                converged = True
                break
            z = self._precondition(r)
            rs_new = float(r @ z)
            p = z + (rs_new / rs) * p
            rs = rs_new
        # the recursive residual drifts; report the true one (unless the caller computes it)
        true_res = float((b - self._apply(x)).norm()) / bnorm if self.final_residual else rnorm / bnorm
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
        if self._dense is not None:
            return self._dense.solve(b)
        if b.ndim == 1:
            return self._solve_one(b)
        first = self._solve_one(b[:, 0])
        if self.materialise and self.report["iterations"] * (b.shape[1] - 1) > self.n_params:
            self._dense = self._materialised(b.device)
            rest = self._dense.solve(b[:, 1:])
        else:
            rest = torch.stack([self._solve_one(b[:, j]) for j in range(1, b.shape[1])], dim=1) \
                if b.shape[1] > 1 else b[:, 1:]
        return torch.cat([first[:, None], rest], dim=1)

    def _materialised(self, device) -> "DenseSolver":
        """``H`` from its ``P`` columns ``H e_j`` (symmetrised), as a :class:`DenseSolver` with this
        solver's damping; refuses (strict) or warns when ``H + mu I`` is not positive definite."""
        eye = torch.eye(self.n_params, dtype=DTYPE, device=device)
        h = torch.stack([self.hvp(eye[:, j]) for j in range(self.n_params)], dim=1)
        self.report["products"] += self.n_params
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # judged below, by this solver's rule
            dense = DenseSolver(h, self.damping)
        self.report["materialised"] = {"hvps": self.n_params, "min_eigenvalue": dense.report["min_eigenvalue"],
                                       "after_iterations": self.report["iterations"]}
        if not dense.report["positive_definite"]:
            self._fail(f"H + mu I is not positive definite (smallest eigenvalue "
                       f"{dense.report['min_eigenvalue']:.3e}): raise the damping or the regularisation.")
        return dense


class MixedPrecisionSolver(_IterativeSolver):
    """``(H + mu I)^-1 b`` by iterative refinement: CG on a cheap float32 product, corrected by
    float64 residuals (docs/math.md §15).

    With ``A = H + mu I`` (``hvp``, float64) and ``A32`` its float32 version (``hvp_float32``,
    float32 products summed in float64), start from ``x = 0``, ``r = b`` and repeat

        ``d ~ A32^-1 r`` (CG on ``A32`` to relative residual ``inner_rtol``),
        ``x <- x + d``,  ``r <- b - A x`` (one float64 product),

    until ``||r|| <= rtol ||b||``. The stopping test uses the float64 residual, so the answer
    meets the same tolerance as :class:`CGSolver` on ``A``; the float32 error ``E = A32 - A``
    only sets how fast ``r`` shrinks, by a factor of about ``inner_rtol + ||E A32^-1||`` per
    refinement. Nearly all products are float32; the float64 ones are one per refinement.
    The last inner solve is asked only for what is still missing (its tolerance is raised to
    ``rtol ||b|| / (2 ||r||)`` when that is looser than ``inner_rtol``).

    Parameters
    ----------
    hvp, hvp_float32:
        Callables ``v (P,) -> H v (P,)``, float64 and float32 (the results float64).
    n_params, damping, strict, preconditioner, progress, progress_every:
        As :class:`CGSolver` (``preconditioner`` and ``progress`` act on the inner solves).
    rtol:
        Stop when the float64 residual ``||b - (H + mu I) x|| <= rtol ||b||``.
    inner_rtol:
        Relative residual of each inner CG solve, in ``(0, 1)``; about the float32 error
        relative to the conditioning is the loosest that still pays (default ``1e-3``).
    max_refinements:
        Cap on refinements (float64 products) per right-hand side.
    max_iter:
        Iteration cap of each inner solve (as :class:`CGSolver`).

    ``report``: ``float32_products``, ``float64_products`` (over all solves), and per solve
    (``report["solves"]``) its ``refinements``, inner ``iterations``, float64 relative
    residual and ``converged``; ``iterations`` and ``relative_residual`` of the last solve.
    Raises :class:`SolverError` (or warns, ``strict=False``) when a refinement does not shrink
    the residual (float32 too coarse for this system: use the float64 :class:`CGSolver`) or
    the cap is reached.
    """

    _counter = "float64_products"  # the float32 ones are counted by the inner CG

    def __init__(self, hvp: Callable[[torch.Tensor], torch.Tensor],
                 hvp_float32: Callable[[torch.Tensor], torch.Tensor], n_params: int, damping: float = 0.0,
                 rtol: float = 1e-10, inner_rtol: float = 1e-3, max_refinements: int = 30,
                 max_iter: int | None = None, strict: bool = True,
                 preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None, progress=None,
                 progress_every: int = 10):
        if not (0 < rtol < 1):
            raise ValueError(f"rtol must lie in (0, 1), got {rtol}.")
        if not (0 < inner_rtol < 1):
            raise ValueError(f"inner_rtol must lie in (0, 1), got {inner_rtol}.")
        if int(max_refinements) < 1:
            raise ValueError(f"max_refinements must be >= 1, got {max_refinements}.")
        self.hvp, self.n_params, self.damping = hvp, int(n_params), _check_damping(damping)
        self.rtol, self.inner_rtol, self.max_refinements = float(rtol), float(inner_rtol), int(max_refinements)
        self.strict, self.progress = strict, progress
        self.inner = CGSolver(hvp_float32, n_params, damping, rtol=inner_rtol, max_iter=max_iter, strict=strict,
                              preconditioner=preconditioner, progress=progress, progress_every=progress_every,
                              final_residual=False)
        self.report: dict = {"solver": "mixed", "damping": self.damping, "inner_rtol": self.inner_rtol,
                             "solves": [], "float32_products": 0, "float64_products": 0}

    def _solve_one(self, b: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(b)
        bnorm = float(b.norm())
        record = {"refinements": 0, "iterations": 0, "relative_residual": 0.0, "converged": bnorm == 0.0}
        self.report["solves"].append(record)
        if bnorm == 0.0:
            return x
        r, rel = b, 1.0
        goal = self.rtol * bnorm
        while True:
            # ask the inner solve for no more than is still missing
            self.inner.rtol = min(max(self.inner_rtol, 0.5 * goal / (rel * bnorm)), 0.5)
            before = self.inner.report["products"]
            x = x + self.inner._solve_one(r)
            self.report["float32_products"] += self.inner.report["products"] - before
            record["iterations"] += self.inner.report["solves"][-1]["iterations"]
            r = b - self._apply(x)
            record["refinements"] += 1
            new_rel = float(r.norm()) / bnorm
            record["relative_residual"] = new_rel
            if self.progress:
                msg = f"refinement {record['refinements']}: float64 relative residual {new_rel:.2e} (rtol {self.rtol:.0e})"
                if callable(self.progress):
                    self.progress(record["refinements"], new_rel)
                else:
                    print(msg, file=sys.stderr, flush=True)
            if new_rel <= self.rtol:
                record["converged"] = True
                break
            if new_rel >= rel:
                self._fail(
                    f"mixed-precision refinement stalled: the float64 relative residual went from "
                    f"{rel:.3e} to {new_rel:.3e} (rtol {self.rtol:.1e}); the float32 product is too "
                    "coarse for this system. Use precision='float64', add damping, or loosen rtol."
                )
                break
            rel = new_rel
            if record["refinements"] >= self.max_refinements:
                self._fail(
                    f"mixed-precision refinement did not converge: float64 relative residual "
                    f"{new_rel:.3e} > rtol {self.rtol:.1e} after {self.max_refinements} refinements. "
                    "Raise max_refinements or use precision='float64'."
                )
                break
        self.report.update(iterations=record["iterations"], relative_residual=record["relative_residual"])
        return x

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + mu I)^-1 b`` for ``b`` of shape ``(P,)`` or ``(P, k)`` (columns solved in turn)."""
        b = torch.as_tensor(b, dtype=DTYPE, device=device_of(b))
        if b.shape[0] != self.n_params:
            raise ValueError(f"b must have {self.n_params} rows, got shape {tuple(b.shape)}.")
        if b.ndim == 1:
            return self._solve_one(b)
        return torch.stack([self._solve_one(b[:, j]) for j in range(b.shape[1])], dim=1)


class SpectralPreconditioner:
    """``M^-1`` for preconditioned CG from the extreme eigenpairs of an approximation of ``H``.

    ``steps`` Lanczos iterations (full reorthogonalisation, seeded start) on ``hvp_approx`` give
    Ritz pairs ``(theta_i, u_i)``, ``U = [u_1..u_k]`` orthonormal; Lanczos finds the ends of the
    spectrum first, where CG loses its iterations. The preconditioner is

        ``M = U diag(max(theta_i, floor) + damping) U^T + bulk (I - U U^T)``,
        ``M^-1 r = U diag(1 / (max(theta_i, floor) + damping)) U^T r + (r - U U^T r) / bulk``,

    symmetric positive definite for ``bulk > 0`` and ``floor + damping > 0``. ``bulk`` is the
    curvature assumed off ``U``: the regulariser ``lam`` plus damping, where the data term's
    curvature is small. ``floor`` (default ``bulk / 20``) clamps Ritz values of the
    approximation that are negative or tiny (a subsample's Hessian is noisier than the full
    one). ``M`` only steers CG: :class:`CGSolver` stops on the full system's residual, so the
    solution is that of the unpreconditioned solve to the same tolerance.
    """

    def __init__(self, hvp_approx: Callable[[torch.Tensor], torch.Tensor], n_params: int, bulk: float,
                 steps: int = 150, damping: float = 0.0, floor: float | None = None, seed: int = 0,
                 device=None):
        if not bulk > 0:
            raise ValueError(f"bulk must be > 0 (the curvature off the kept eigenvectors), got {bulk}.")
        self.bulk, self.damping = float(bulk), _check_damping(damping)
        self.floor = self.bulk / 20.0 if floor is None else float(floor)
        if not self.floor + self.damping > 0:
            raise ValueError("floor + damping must be > 0 for a positive definite preconditioner.")
        ritz, vectors = lanczos(hvp_approx, n_params, steps, seed=seed, device=device)
        self.ritz_values, self.vectors = ritz, vectors
        k = int(ritz.numel())
        self._inv = 1.0 / (self.ritz_values.clamp_min(self.floor) + self.damping)
        self.report = {"preconditioner": "spectral", "steps": k, "bulk": self.bulk, "floor": self.floor,
                       "ritz_min": float(ritz[0]), "ritz_max": float(ritz[-1])}

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        c = self.vectors.T @ r
        return self.vectors @ (c * self._inv) + (r - self.vectors @ c) / self.bulk


def make_solver(objective, theta: torch.Tensor, kind: str = "auto", damping: float = 0.0,
                precondition: int | None = None, precondition_steps: int = 150, precision: str = "float64",
                **cg_kwargs):
    """Build a solver for ``H = grad^2 objective.loss(theta)``.

    ``kind``: ``"dense"``, ``"cg"``, or ``"auto"`` (dense when ``P <= 4000``, else CG).
    ``precondition`` (CG only): precondition with a :class:`SpectralPreconditioner` from
    ``precondition_steps`` Lanczos steps on the Hessian of the objective's first batches
    holding about that many pairs (``objective.batch_subset``), ``bulk = lam + damping``.
    Worth it where ``n`` is many times that subsample: each Lanczos step costs a
    subsample-sized product, each CG iteration saved a full one.
    ``precision``: ``"float64"`` (default: every product in float64) or ``"mixed"``: a
    :class:`MixedPrecisionSolver` whose inner CG (and preconditioner) use float32 products,
    refined with float64 residuals to the same ``rtol`` (matrix-free only: ``"auto"`` then
    means CG; needs the objective's structured product). ``cg_kwargs`` go to the solver
    (``rtol``, ``max_iter``, ``strict``, ``progress``; ``inner_rtol``, ``max_refinements`` for
    ``"mixed"``).
    """
    if precision not in ("float64", "mixed"):
        raise ValueError(f"unknown precision {precision!r}; choose 'float64' or 'mixed'.")
    mixed = precision == "mixed"
    if mixed:
        if kind == "dense":
            raise ValueError("precision='mixed' refines matrix-free CG solves; use kind='cg' (or 'auto').")
        if not objective.param.structured_hvp:
            raise ValueError(
                f"precision='mixed' needs the structured float32 Hessian-vector product, which "
                f"{type(objective.param).__name__} does not use; use precision='float64'."
            )
        kind = "cg"
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
        if precondition is not None:
            if not objective.lam + damping > 0:
                raise ValueError("precondition needs lam + damping > 0 (the curvature off the kept eigenvectors).")
            sub = objective.batch_subset(int(precondition))
            sub_precision = "float32" if mixed else "float64"  # it only steers CG
            cg_kwargs["preconditioner"] = SpectralPreconditioner(
                lambda v: sub.hvp(theta, v, sub_precision), objective.n_params, bulk=objective.lam + damping,
                steps=precondition_steps, damping=damping, device=theta.device)
        if mixed:
            return MixedPrecisionSolver(lambda v: objective.hvp(theta, v), lambda v: objective.hvp(theta, v, "float32"),
                                        objective.n_params, damping, **cg_kwargs)
        return CGSolver(lambda v: objective.hvp(theta, v), objective.n_params, damping, **cg_kwargs)
    raise ValueError(f"unknown solver kind {kind!r}; choose 'dense', 'cg' or 'auto'.")


def lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, steps: int, seed: int = 0,
            device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz pairs of the symmetric operator ``hvp`` (``v (P,) -> H v``): ``steps`` Lanczos
    iterations with full reorthogonalisation (twice per step, stable in float64) from a seeded
    random start, stopped early on an invariant subspace. Returns ``(values (k,), vectors (P, k))``,
    values ascending, vectors orthonormal; ``k <= min(steps, P)``. The ends of the spectrum
    converge first, and the Ritz values bracket inwards (the smallest is >= the true smallest)."""
    steps = int(min(steps, n_params))
    if steps < 1:
        raise ValueError(f"Lanczos needs at least one step, got {steps}.")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n_params, generator=gen, dtype=DTYPE, device="cpu").to(device or "cpu")
    basis = torch.zeros(n_params, steps, dtype=DTYPE, device=q.device)
    basis[:, 0] = q / q.norm()
    alpha, beta = [], []
    k = steps
    for j in range(steps):
        w = torch.as_tensor(hvp(basis[:, j]), dtype=DTYPE, device=basis.device)
        alpha.append(float(basis[:, j] @ w))
        for _ in range(2):
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
        b = float(w.norm())
        if j + 1 == steps or b <= 1e-12 * max(abs(a) for a in alpha):  # invariant subspace found
            k = j + 1
            break
        beta.append(b)
        basis[:, j + 1] = w / b
    t = torch.diag(torch.tensor(alpha, dtype=DTYPE, device="cpu"))  # the small tridiagonal: on the CPU
    if k > 1:
        off = torch.tensor(beta[: k - 1], dtype=DTYPE, device="cpu")
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    ritz, vecs = torch.linalg.eigh(t)
    return ritz.to(q.device), basis[:, :k] @ vecs.to(q.device)


def lanczos_extremes(hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, iters: int = 60, seed: int = 0,
                     device=None) -> tuple[float, float]:
    """Smallest and largest eigenvalue of ``hvp`` estimated by :func:`lanczos` with ``iters``
    steps (``iters`` Hessian-vector products): the smallest returned is >= the true smallest,
    the largest <= the true largest. For when a dense Hessian is too expensive (block mode)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}.")
    ritz, _ = lanczos(hvp, n_params, iters, seed=seed, device=device)
    return float(ritz[0]), float(ritz[-1])
