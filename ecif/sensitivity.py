"""Ablation and sensitivity sweeps: damping ``mu``, regularisation ``lam``, batch size.

Each sweep reports, per setting and influence variant, the agreement of ``IS`` with leave-one-out
retraining on a fixed sample of pairs (Pearson, Spearman; ground truth from
:func:`ecif.retraining.loo_val_changes`), detection quality of ``-IS`` (AUROC, precision@k with
k = number misaligned, when a mask is given), and the smallest Hessian eigenvalue (undamped,
dense solver only; ``nan`` for CG). Changing ``lam`` or the batch size changes the objective, so
those sweeps refit ``theta_hat`` and recompute the ground truth; the damping sweep keeps the fit
and the ground truth and only changes the solve.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from .batching import BatchingProtocol
from .evaluate import validation_gradient
from .fit import fit
from .influence import ECIF, VARIANTS
from .metrics import auroc, loo_agreement, precision_at_k
from .objective import ContrastiveObjective
from .retraining import loo_val_changes
from .solvers import DenseSolver

__all__ = ["batch_size_sweep", "damping_sweep", "lam_sweep", "score_rows"]


def _min_eig(solver) -> float:
    return float(solver.eigenvalues[0]) if isinstance(solver, DenseSolver) else float("nan")


def score_rows(engine, val_gradient, loo=None, mask=None, variants=VARIANTS) -> list[dict]:
    """One dict per variant: ``variant``, ``pearson``/``spearman`` against ``loo`` (a
    DataFrame from :func:`~ecif.retraining.loo_val_changes`), ``auroc``/``precision_at_k`` of
    ``-IS`` against ``mask``; missing inputs give ``nan``."""
    IS = engine.influence_scores(val_gradient, variants=variants)
    rows = []
    for v in variants:
        s = IS[v].numpy()
        row = {"variant": v, "pearson": np.nan, "spearman": np.nan, "auroc": np.nan, "precision_at_k": np.nan}
        if loo is not None:
            a = loo_agreement(s[loo["index"].to_numpy()], loo["actual"].to_numpy())
            row.update(pearson=a["pearson"], spearman=a["spearman"])
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            row.update(auroc=auroc(-s, m), precision_at_k=precision_at_k(-s, m, int(m.sum())))
        rows.append(row)
    return rows


def damping_sweep(objective, theta_hat, val_gradient, dampings, loo=None, mask=None,
                  variants=VARIANTS) -> pd.DataFrame:
    """Rows ``damping``, ``min_eigenvalue``, ``variant``, ``pearson``, ``spearman``, ``auroc``,
    ``precision_at_k`` for each damping ``mu``; one dense Hessian shared by all (``P`` up to a
    few thousand)."""
    h = objective.hessian(torch.as_tensor(theta_hat, dtype=torch.float64))
    rows = []
    for mu in dampings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # indefinite at small mu: reported below
            solver = DenseSolver(h, damping=float(mu))
        eng = ECIF(objective, theta_hat, solver=solver)
        for r in score_rows(eng, val_gradient, loo, mask, variants):
            rows.append({"damping": float(mu), "min_eigenvalue": _min_eig(solver), **r})
    return pd.DataFrame(rows)


def _refit_and_score(objective, val_objective, loo_indices, mask, variants, theta_init, gtol):
    res = fit(objective, theta_init=theta_init, gtol=gtol, max_iter=200)
    eng = ECIF(objective, res.theta, solver="auto")
    g = validation_gradient(val_objective, res.theta)
    loo = None
    if loo_indices is not None:
        loo = loo_val_changes(objective, res.theta, val_objective, loo_indices, gtol=gtol, preconditioner=eng.solver)
    info = {"fit_grad_norm": res.grad_norm, "fit_converged": res.converged, "min_eigenvalue": _min_eig(eng.solver),
            "loo_converged": True if loo is None else bool(loo["converged"].all())}
    return res.theta, [{**info, **r} for r in score_rows(eng, g, loo, mask, variants)]


def lam_sweep(objective, lams, val_objective, loo_indices=None, mask=None, variants=VARIANTS,
              gtol: float = 1e-9) -> pd.DataFrame:
    """Refit at each ``lam`` (warm-started from the previous optimum, in the order given), then
    score. Rows ``lam``, ``fit_grad_norm``, ``fit_converged``, ``min_eigenvalue``,
    ``loo_converged``, ``variant``, ``pearson``, ``spearman``, ``auroc``, ``precision_at_k``."""
    rows, theta = [], None
    for lam in lams:
        theta, rs = _refit_and_score(objective.with_lam(float(lam)), val_objective, loo_indices, mask, variants,
                                     theta, gtol)
        rows += [{"lam": float(lam), **r} for r in rs]
    return pd.DataFrame(rows)


def batch_size_sweep(param, x, y, batch_sizes, lam: float, val_objective, loo_indices=None, mask=None,
                     seed: int = 0, variants=VARIANTS, gtol: float = 1e-9) -> pd.DataFrame:
    """Rebuild the training objective with ``BatchingProtocol.from_seed(n, b, seed)`` for each
    batch size ``b`` (``None`` = one full batch), refit from ``theta0``, and score (the
    validation objective keeps its own batching). Rows as :func:`lam_sweep` with ``batch_size``
    (``n`` for a full batch) instead of ``lam``."""
    n = np.shape(x)[0]
    rows = []
    for b in batch_sizes:
        obj = ContrastiveObjective(param, x, y, BatchingProtocol.from_seed(n, b, seed), lam=lam)
        _, rs = _refit_and_score(obj, val_objective, loo_indices, mask, variants, None, gtol)
        rows += [{"batch_size": n if b is None else int(b), **r} for r in rs]
    return pd.DataFrame(rows)
