"""Deterministic full-batch float64 fits to a tight optimum.

Influence estimates are only comparable with retraining when ``theta_hat`` and every
``theta_hat_{-R}`` are true optima (docs/math.md §11), so the fit is a damped Newton method on the whole
objective (no mini-batches, no randomness), run until ``||grad L|| <= gtol``:

* ``method="newton"``: exact Newton steps from the dense Hessian (eigendecomposition; negative
  curvature is shifted away), for parameter counts up to a few thousand;
* ``method="newton-cg"``: truncated Newton, each step a CG solve on Hessian-vector products
  (any size);
* ``"auto"`` picks ``newton`` for ``P <= 3000``.

Each step is followed by a backtracking (Armijo) line search. A fit that stops above ``gtol``
warns with :class:`ConvergenceWarning` and returns ``converged=False``: never silently. The
warning names the likely cause (:func:`diagnose`: an embedding collapsed towards zero, docs/math.md
§12; features with a large common offset, §13; the largest curvature against ``lam``) and what to
change.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ecif.core.solvers import CGSolver, SpectralPreconditioner
from ecif.core.terms import DTYPE, device_of

__all__ = ["FitResult", "ConvergenceWarning", "diagnose", "fit", "offset_ratio"]

SUBSAMPLE_GTOL = 1e-6  # gradient norm of the subsample stages of fit(subsample=...)
OFFSET_WARN = 3.0  # offset ratio above which uncentred features are named as a cause (docs/math.md §13)


class ConvergenceWarning(RuntimeWarning):
    """A fit stopped before reaching the requested gradient norm."""


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    ``theta`` (``(P,)`` float64) is the last iterate, ``grad_norm`` the Euclidean norm of the
    objective's gradient there, ``converged`` whether ``grad_norm <= gtol``.
    """

    theta: torch.Tensor
    loss: float
    grad_norm: float
    gtol: float
    iterations: int
    converged: bool
    method: str
    seconds: float

    def summary(self) -> dict:
        """JSON-friendly summary: everything but ``theta`` and the wall-clock ``seconds`` (saved
        with the fit, so it depends only on the inputs; timings go to the metrics' ``time``)."""
        d = asdict(self)
        d.pop("theta")
        d.pop("seconds")
        return d


def _newton_direction_dense(objective, theta, g, reg):
    h = objective.hessian(theta)
    evals, evecs = torch.linalg.eigh(0.5 * (h + h.T))
    # Levenberg-Marquardt: shift negative curvature away, plus an adaptive ridge ``reg``
    shift = max(0.0, -1.5 * float(evals[0])) + reg
    return -(evecs @ ((evecs.T @ g) / (evals + shift)))


def _newton_direction_cg(objective, theta, g, gnorm, reg, preconditioner=None, product="float64"):
    rtol = min(0.5, max(np.sqrt(gnorm), 1e-12))  # Eisenstat-Walker forcing term
    solver = CGSolver(lambda v: objective.hvp(theta, v, product), objective.n_params, damping=reg, rtol=rtol,
                      max_iter=min(500, 2 * objective.n_params), strict=False, preconditioner=preconditioner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = solver.solve(-g)
    if float(d @ g) >= 0 or float(d.norm()) == 0.0:
        d = -g
    # the solve's own count: a solve stopped by negative curvature records its iterations only there
    return d, int(solver.report["solves"][-1]["iterations"]) if solver.report["solves"] else 0


def _collapse_hint(objective, theta) -> str:
    """Name the usual cause of a failed fit: an unnormalised embedding driven towards zero."""
    if not hasattr(objective, "param"):
        return ""
    with torch.no_grad():
        u, v = objective.param.embed(theta, objective.data)
        ratio = min(float(u.norm(dim=1).min() / u.norm(dim=1).median()),
                    float(v.norm(dim=1).min() / v.norm(dim=1).median()))
    if ratio < 1e-3:
        return (f" An embedding collapsed towards zero (smallest ||W x|| is {ratio:.1e} of the median): "
                "with normalised embeddings its direction is then free, a degenerate valley that a "
                "larger lam (relative to 1/n) keeps the fit out of.")
    return ""


def offset_ratio(z) -> float:
    """``||mean(z)|| / mean_k ||z_k - mean(z)||`` of the rows of ``z``: how far a cloud of features
    sits from the origin in units of its own spread (docs/math.md §13). Large values mean every
    normalised embedding ``W z / ||W z||`` points nearly the same way."""
    z = torch.as_tensor(z, device=device_of(z)).to(DTYPE)
    mu = z.mean(dim=0)
    spread = float((z - mu).norm(dim=1).mean())
    return float(mu.norm()) / spread if spread > 0 else float("inf")


def _offset_hint(objective) -> str:
    """Name a large common offset of the features (docs/math.md §13)."""
    if not (hasattr(objective, "_x") and hasattr(objective, "_y")):
        return ""
    rx, ry = offset_ratio(objective._x), offset_ratio(objective._y)
    if max(rx, ry) <= OFFSET_WARN:
        return ""
    return (f" The features share a large common offset (||mean|| / mean ||x - mean|| is {rx:.1f} for images, "
            f"{ry:.1f} for texts): all embeddings W x point nearly the same way, the curvature along the "
            "offset is far larger than along the rest and steps stall; centre the features with a "
            "statistic that does not depend on the train pairs (the pretrain-split means, "
            "finetune.centre: true in params.yaml, or ecif.kit.problem.build_problem(centre=True)).")


def _curvature_hint(objective, theta, n_power: int = 20) -> str:
    """The largest curvature (power iteration on Hessian-vector products) against ``lam``."""
    if not (hasattr(objective, "hvp") and hasattr(objective, "lam")) or objective.lam <= 0:
        return ""
    gen = torch.Generator(device="cpu").manual_seed(0)  # on the CPU: the same start on every device
    v = torch.randn(objective.n_params, generator=gen, dtype=DTYPE, device="cpu").to(device_of(theta))
    v = v / v.norm()
    top = 0.0
    for _ in range(n_power):
        hv = objective.hvp(theta, v).detach()
        top = float(hv.norm())
        if not np.isfinite(top) or top == 0.0:
            return ""
        v = hv / top
    return (f" Largest Hessian eigenvalue about {top:.3g}, {top / objective.lam:.2g} times lam = "
            f"{objective.lam:g} (a bound on the condition number where the data term is convex).")


def diagnose(objective, theta) -> str:
    """Likely causes of a fit that stopped above ``gtol``: an embedding collapsed towards zero,
    a large common offset of the features, the spread of the curvature. Empty when none is
    found (or the objective has no such structure)."""
    return _collapse_hint(objective, theta) + _offset_hint(objective) + _curvature_hint(objective, theta)


def _progress_reporter(progress, gtol: float):
    """``None`` for no progress, else a callable taking one step's fields (see :func:`fit`)."""
    if progress is None or progress is False:
        return None
    if callable(progress):
        return progress

    def line(r):
        print(f"fit (n = {r['n']}) step {r['step']}: loss {r['loss']:.10g}, |grad| {r['grad_norm']:.2e} (gtol {gtol:.0e}), "
              f"{r['cg_iterations']} CG iterations, step {r['step_length']:.3g}, {r['seconds']:.1f} s",
              file=sys.stderr, flush=True)

    return line


def fit(objective, theta_init: torch.Tensor | None = None, gtol: float = 1e-9, max_iter: int = 100,
        method: str = "auto", warn: bool = True, max_step: float = 1.0,
        preconditioner=None, progress=None, subsample: int | None = None,
        precondition: int | None = None, precision: str = "float64") -> FitResult:
    """Minimise ``objective.loss`` from ``theta_init`` (default ``objective.theta0``).

    Parameters
    ----------
    objective:
        A :class:`~ecif.core.objective.ContrastiveObjective` (or anything with ``loss``, ``hessian``,
        ``hvp``, ``loss_and_gradient``, ``n_params``, ``theta0``).
    gtol:
        Target Euclidean gradient norm.
    max_iter:
        Maximum number of Newton steps.
    method:
        ``"newton"``, ``"newton-cg"`` or ``"auto"``.
    warn:
        Emit :class:`ConvergenceWarning` when ``gtol`` is not reached.
    max_step:
        Trust radius: no step is longer than this (Euclidean norm in parameter space). With
        normalised embeddings the objective has degenerate valleys (an embedding ``W x -> 0``
        whose direction is then free); bounded steps keep the fit in the basin it starts in.
    preconditioner:
        Optional solver (``solve(g)``) for a fixed Hessian, e.g. the one at ``theta_hat`` when
        retraining warm-started: steps ``-H_hat^-1 grad`` need no new Hessian and converge
        linearly at a rate of order ``|R|/n``; the fit switches to true Newton steps when they
        stall.
    progress:
        ``None``/``False``: silent. ``True``: one line per Newton step on ``sys.stderr``
        (step, loss, gradient norm against ``gtol``, CG iterations of the step, elapsed
        seconds). A callable receives the same fields as a dict after every step.
    subsample:
        Start from a fit of a random subsample (for large ``n``): when ``objective.n >
        4 * subsample`` and no ``theta_init`` is given, first fit the objective of its first
        batches holding about ``n / 4`` pairs (``objective.batch_subset``, recursively with the
        same ``subsample``, to ``max(gtol, SUBSAMPLE_GTOL)``: its optimum differs from the full
        one by far more than that), then continue on the whole objective from
        there. Its optimum is near the full one, so the costly full-size Newton steps are few;
        the result is judged, as always, by the full objective's gradient norm. ``seconds``
        and ``iterations`` count the full-size steps only; progress lines of a stage say its
        ``n``.
    precondition:
        ``method="newton-cg"`` only, where ``objective.n >= 4 * precondition`` and ``lam > 0``:
        precondition every CG solve of the Newton steps with one
        :class:`~ecif.core.solvers.SpectralPreconditioner`, built at the starting point from
        Lanczos on the Hessian of the objective's first batches holding about ``precondition``
        pairs (``bulk = lam``). It changes how many Hessian-vector products a step takes,
        not the steps' stopping rule (each solve is judged on the full system's residual).
    precision:
        ``method="newton-cg"`` only: ``"float64"`` (default) or ``"mixed"``: the Newton steps'
        CG solves (and the preconditioner's Lanczos) use float32 Hessian-vector products
        (``objective.hvp(..., "float32")``, about 1e-7 relative off and several times cheaper
        for LoRA heads). A step is an inexact Newton step either way; the loss, the gradient,
        the line search and the stopping test stay float64, so the result is judged, and
        converges to ``gtol``, exactly as in float64 (a Hessian off by 1e-7 only slows the
        final quadratic convergence to a linear one of rate about 1e-7 times the condition
        number). Needs the objective's structured product (not block mode).
    """
    if method == "auto":
        # with a preconditioner the fit is a warm-started refit: if the fixed Hessian stalls,
        # matrix-free Newton-CG steps are far cheaper than rebuilding a dense Hessian
        # and a parametrization whose Hessian is expensive (block mode: each column is a double
        # backward through transformer blocks) is fitted matrix-free whatever its size
        cheap = getattr(getattr(objective, "param", None), "structured_hvp", True)
        method = "newton" if objective.n_params <= 3000 and preconditioner is None and cheap else "newton-cg"
    if method not in ("newton", "newton-cg"):
        raise ValueError(f"unknown fit method {method!r}; choose 'newton', 'newton-cg' or 'auto'.")
    if precision not in ("float64", "mixed"):
        raise ValueError(f"unknown fit precision {precision!r}; choose 'float64' or 'mixed'.")
    if precision == "mixed" and (method != "newton-cg"
                                 or not getattr(getattr(objective, "param", None), "structured_hvp", False)):
        raise ValueError("precision='mixed' needs method='newton-cg' and the objective's structured float32 "
                         "Hessian-vector product (not block mode); use precision='float64'.")
    product = "float32" if precision == "mixed" else "float64"
    if not gtol > 0:
        raise ValueError(f"gtol must be > 0, got {gtol}.")
    report_fn = _progress_reporter(progress, gtol)
    if (subsample is not None and theta_init is None and preconditioner is None
            and hasattr(objective, "batch_subset") and objective.n > 4 * int(subsample)):
        sub = objective.batch_subset(objective.n // 4)
        theta_init = fit(sub, gtol=max(gtol, SUBSAMPLE_GTOL), max_iter=max_iter, method=method, warn=False,
                         max_step=max_step, progress=report_fn, subsample=subsample,
                         precondition=precondition, precision=precision).theta
    theta = (objective.theta0 if theta_init is None
             else torch.as_tensor(theta_init, device=device_of(objective.theta0))).to(DTYPE).clone()
    if theta.shape != (objective.n_params,):
        raise ValueError(f"theta_init must have shape ({objective.n_params},), got {tuple(theta.shape)}.")
    start = time.perf_counter()
    pcg = None
    if (precondition is not None and method == "newton-cg" and preconditioner is None
            and hasattr(objective, "batch_subset") and objective.lam > 0
            and objective.n >= 4 * int(precondition)):
        sub, at = objective.batch_subset(int(precondition)), theta.clone()
        pcg = SpectralPreconditioner(lambda v: sub.hvp(at, v, product), objective.n_params, bulk=objective.lam,
                                     device=theta.device)
    f, g = objective.loss_and_gradient(theta)
    gnorm = float(g.norm())
    it = 0
    reg = 1e-3 * gnorm  # Levenberg-Marquardt ridge, shrunk after full steps, grown after short ones
    radius = float(max_step)  # trust radius on ||step||: keeps the fit in the local basin
    chord = preconditioner is not None
    chord_rate = None
    report = report_fn
    n_here = getattr(objective, "n", None)
    while gnorm > gtol and it < max_iter:
        it += 1
        cg_it = 0
        if chord:
            d = -preconditioner.solve(g)
        elif method == "newton":
            d = _newton_direction_dense(objective, theta, g, reg)
        else:
            d, cg_it = _newton_direction_cg(objective, theta, g, gnorm, reg, pcg, product)
        dnorm = float(d.norm())
        if dnorm > radius:
            d = d * (radius / dnorm)
        slope = float(g @ d)
        alpha, accepted = 1.0, False
        for _ in range(40):
            cand = theta + alpha * d
            f_new, g_new = objective.loss_and_gradient(cand)
            armijo = float(f_new) <= float(f) + 1e-4 * alpha * slope
            # near the optimum, loss differences fall below rounding: accept a step that does
            # not raise the loss beyond rounding and lowers the gradient norm
            flat = float(f_new) <= float(f) + 1e-13 * abs(float(f)) and float(g_new.norm()) < gnorm
            if slope < 0 and torch.isfinite(f_new) and (armijo or flat):
                accepted = True
                break
            alpha *= 0.5
        if not accepted:
            if chord:  # the fixed Hessian no longer fits: switch to true Newton steps
                chord = False
                continue
            break
        new_gnorm = float(g_new.norm())
        if chord:
            rate = new_gnorm / gnorm
            chord_rate = rate if chord_rate is None else max(chord_rate, rate)
            if rate > 0.5:  # slow linear convergence: switch to true Newton steps
                chord = False
        if alpha == 1.0:
            reg /= 10.0
            radius = min(2.0 * radius, float(max_step))
        else:
            reg = min(reg * 10.0, 1e6)
            radius = max(alpha * min(dnorm, radius), 1e-12)
        theta, f, g, gnorm = cand, f_new, g_new, new_gnorm
        if report is not None:
            report({"step": it, "n": n_here, "loss": float(f), "grad_norm": gnorm, "cg_iterations": cg_it,
                    "step_length": alpha, "seconds": time.perf_counter() - start})
    result = FitResult(theta=theta.detach(), loss=float(f), grad_norm=gnorm, gtol=gtol, iterations=it,
                       converged=gnorm <= gtol, method=method, seconds=time.perf_counter() - start)
    if warn and not result.converged:
        warnings.warn(
            f"fit did not converge: gradient norm {gnorm:.3e} > gtol {gtol:.1e} after {it} "
            f"{method} iterations.{diagnose(objective, theta)} Influence and leave-out ground "
            "truth assume an optimum; centre the features, raise max_iter, raise the regularisation lam, "
            "use method='newton', or loosen gtol knowingly.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result
