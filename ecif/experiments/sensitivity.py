"""Ablation and sensitivity sweeps: damping ``mu``, regularisation ``lam``, batch size.

Each sweep reports, per setting and influence variant, the agreement of ``IS`` with leave-one-out
retraining on a fixed sample of pairs (Pearson, Spearman; ground truth from
:func:`ecif.experiments.retraining.loo_val_changes`), detection quality of ``-IS`` (AUROC, precision@k with
k = number misaligned, when a mask is given), and the smallest Hessian eigenvalue (undamped,
dense solver only; ``nan`` for CG). Changing ``lam`` or the batch size changes the objective, so
those sweeps refit ``theta_hat`` and recompute the ground truth; the damping sweep keeps the fit
and the ground truth and only changes the solve. Block mode (a
:class:`~ecif.core.blocks.BlockLoRA` objective) solves by matrix-free CG, as its fit's engine does
(``Fitted.engine``): no dense Hessian is formed (``P`` Hessian-vector products each), so its
``min_eigenvalue`` is ``nan``.

The batch-size sweep also answers *how* the influence and the ground truth move with the
protocol: each row carries ``is_spearman_vs_first`` (rank correlation of the variant's ``IS`` over
all pairs with the same variant's ``IS`` at the first batch size of the sweep),
``loo_spearman_vs_first`` (the same for the leave-one-out ground truth on the fixed sample) and
``neg_to_pos`` (``||IS_negative|| / ||IS_positive||`` over all pairs: the weight of the negative
role at that batch size).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.blocks import BlockLoRA
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.influence import ECIF
from ecif.experiments.distributed import map_shared
from ecif.experiments.metrics import auroc, loo_agreement, precision_at_k
from ecif.core.objective import ContrastiveObjective
from ecif.experiments.retraining import loo_val_changes
from ecif.core.solvers import DenseSolver
from ecif.core.terms import VARIANTS

__all__ = ["batch_size_sweep", "damping_sweep", "lam_sweep", "score_rows"]


def _solver_kind(objective) -> str:
    """``"cg"`` for a block-mode objective (no dense Hessian), else ``"auto"``."""
    return "cg" if isinstance(objective.param, BlockLoRA) else "auto"


def _min_eig(solver) -> float:
    return float(solver.eigenvalues[0]) if isinstance(solver, DenseSolver) else float("nan")


def score_rows(engine, val_gradient, loo=None, mask=None, variants=VARIANTS, scores_out=None) -> list[dict]:
    """One dict per variant: ``variant``, ``pearson``/``spearman`` against ``loo`` (a
    leave-one-out table with ``pair`` and ``actual``, e.g. from
    :func:`~ecif.experiments.retraining.loo_val_changes`), ``auroc``/``precision_at_k`` of
    ``-IS`` against ``mask``; missing inputs give ``nan``. With a dict ``scores_out``, the
    ``(n,)`` score arrays are also stored there by variant."""
    IS = engine.influence_scores(val_gradient, variants=variants)
    if scores_out is not None:
        scores_out.update({v: IS[v].cpu().numpy() for v in variants})
    rows = []
    for v in variants:
        s = IS[v].cpu().numpy()
        row = {"variant": v, "pearson": np.nan, "spearman": np.nan, "auroc": np.nan, "precision_at_k": np.nan}
        if loo is not None:
            a = loo_agreement(s[loo["pair"].to_numpy()], loo["actual"].to_numpy())
            row.update(pearson=a["pearson"], spearman=a["spearman"])
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            row.update(auroc=auroc(-s, m), precision_at_k=precision_at_k(-s, m, int(m.sum())))
        rows.append(row)
    return rows


def damping_sweep(objective, theta_hat, val_gradient, dampings, loo=None, mask=None,
                  variants=VARIANTS, client=None, progress: bool = True) -> pd.DataFrame:
    """Rows ``damping``, ``min_eigenvalue``, ``variant``, ``pearson``, ``spearman``, ``auroc``,
    ``precision_at_k`` for each damping ``mu``; one dense Hessian shared by all (``P`` up to a
    few thousand), or one CG solve per ``mu`` in block mode (``min_eigenvalue`` ``nan``).
    ``client``: a Dask client (:func:`ecif.experiments.distributed.connect`) to run one task per
    damping, the Hessian and the scores' inputs scattered once; ``None`` runs them here, with
    bit-identical results. ``progress``: a ``damping i/N`` line now and then."""
    _check_values(dampings, "dampings")
    theta = torch.as_tensor(theta_hat, dtype=torch.float64, device=objective.device)
    cg = _solver_kind(objective) == "cg"
    shared = {"objective": objective, "theta_hat": theta, "hessian": None if cg else objective.hessian(theta),
              "val_gradient": val_gradient, "loo": loo, "mask": mask}
    parts = map_shared(_damping_point, shared, [float(mu) for mu in dampings], tuple(variants), client=client,
                       progress=progress, label="damping")
    return pd.DataFrame([row for part in parts for row in part])


def _damping_point(shared: dict, mu: float, variants) -> list[dict]:
    """One setting of :func:`damping_sweep` (a self-contained task): solve and score at ``mu``,
    from the shared dense Hessian, or by CG when there is none (block mode)."""
    if shared["hessian"] is None:
        eng = ECIF(shared["objective"], shared["theta_hat"], solver="cg", damping=mu)
        solver = eng.solver
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # indefinite at small mu: reported below
            solver = DenseSolver(shared["hessian"], damping=mu)
        eng = ECIF(shared["objective"], shared["theta_hat"], solver=solver)
    return [{"damping": mu, "min_eigenvalue": _min_eig(solver), **r}
            for r in score_rows(eng, shared["val_gradient"], shared["loo"], shared["mask"], variants)]


def _refit_and_score(objective, val_objective, loo_indices, mask, variants, theta_init, gtol, method="auto",
                     scores_out=None):
    """Fit ``objective`` from ``theta_init`` (``None``: ``theta0``), score, and measure the
    leave-one-out ground truth on ``loo_indices`` here (serial refits): the work of one sweep
    setting. Returns the optimum and one row per variant."""
    res = fit(objective, theta_init=theta_init, gtol=gtol, max_iter=200, method=method)
    eng = ECIF(objective, res.theta, solver=_solver_kind(objective))
    g = validation_gradient(val_objective, res.theta)
    loo = None
    if loo_indices is not None:
        loo = loo_val_changes(objective, res.theta, val_objective, loo_indices, gtol=gtol, preconditioner=eng.solver,
                              progress=False)
    info = {"fit_grad_norm": res.grad_norm, "fit_converged": res.converged, "min_eigenvalue": _min_eig(eng.solver),
            "loo_converged": True if loo is None else bool(loo["converged"].all())}
    rows = [{**info, **r} for r in score_rows(eng, g, loo, mask, variants, scores_out)]
    if scores_out is not None and loo is not None:
        scores_out["loo"] = loo["actual"].to_numpy()
    return res.theta, rows


def lam_sweep(objective, lams, val_objective, loo_indices=None, mask=None, variants=VARIANTS,
              gtol: float = 1e-9, method: str = "auto", client=None, progress: bool = True,
              theta_init=None) -> pd.DataFrame:
    """Refit at each ``lam`` from ``theta_init`` (``None``: ``theta0``; every setting starts
    from the same point, so the settings are independent; ``method`` as in
    :func:`~ecif.core.fit.fit`), then score and measure the leave-one-out ground truth on
    ``loo_indices``. Rows ``lam``, ``fit_grad_norm``, ``fit_converged``, ``min_eigenvalue``,
    ``loo_converged``, ``variant``, ``pearson``, ``spearman``, ``auroc``, ``precision_at_k``, in
    the order of ``lams``.

    ``client``: a Dask client (:func:`ecif.experiments.distributed.connect`) to run one task per
    setting (fit, scores and its leave-one-out refits), the objective and the validation data
    scattered once; ``None`` runs them here, with bit-identical results. ``progress``: a
    ``lam i/N`` line now and then."""
    _check_values(lams, "lams")
    shared = {"objective": objective, "val_objective": val_objective, "loo_indices": loo_indices, "mask": mask,
              "theta_init": None if theta_init is None else torch.as_tensor(
                  theta_init, dtype=torch.float64, device=objective.device)}
    parts = map_shared(_lam_point, shared, [float(lam) for lam in lams], tuple(variants), gtol, method,
                       client=client, progress=progress, label="lam")
    return pd.DataFrame([row for part in parts for row in part])


def _lam_point(shared: dict, lam: float, variants, gtol: float, method: str) -> list[dict]:
    """One setting of :func:`lam_sweep` (a self-contained task)."""
    _, rows = _refit_and_score(shared["objective"].with_lam(lam), shared["val_objective"], shared["loo_indices"],
                               shared["mask"], variants, shared["theta_init"], gtol, method)
    return [{"lam": lam, **r} for r in rows]


def batch_size_sweep(param, x, y, batch_sizes, lam: float, val_objective, loo_indices=None, mask=None,
                     seed: int = 0, variants=VARIANTS, gtol: float = 1e-9, method: str = "auto", client=None,
                     progress: bool = True) -> pd.DataFrame:
    """Rebuild the training objective with ``BatchingProtocol.from_seed(n, b, seed)`` for each
    batch size ``b`` (``None`` = one full batch), refit from ``theta0``, and score (the
    validation objective keeps its own batching). Rows as :func:`lam_sweep` with ``batch_size``
    (``n`` for a full batch) instead of ``lam``, plus ``is_spearman_vs_first``,
    ``loo_spearman_vs_first`` (``nan`` without ``loo_indices``) and ``neg_to_pos`` (module
    docstring). The negative role is always scored, so ``neg_to_pos`` is defined. ``client``
    (one task per batch size; the features ``x``, ``y`` and the validation data scattered once)
    and ``progress`` as in :func:`lam_sweep`."""
    _check_values(batch_sizes, "batch_sizes")
    n = np.shape(x)[0]
    scored = tuple(dict.fromkeys([*variants, "positive", "negative"]))
    shared = {"param": param, "x": x, "y": y, "lam": float(lam), "seed": int(seed), "val_objective": val_objective,
              "loo_indices": loo_indices, "mask": mask}
    sizes = [None if b is None else int(b) for b in batch_sizes]
    parts = map_shared(_batch_point, shared, sizes, scored, gtol, method, client=client, progress=progress,
                       label="batch size")
    first = parts[0][1]
    rows = []
    for b, (rs, scores) in zip(sizes, parts):
        neg_to_pos = float(np.linalg.norm(scores["negative"]) / np.linalg.norm(scores["positive"]))
        loo_rho = _spearman(scores["loo"], first["loo"]) if "loo" in scores else np.nan
        for r in rs:
            if r["variant"] not in variants:
                continue
            rows.append({"batch_size": n if b is None else b, **r,
                         "is_spearman_vs_first": _spearman(scores[r["variant"]], first[r["variant"]]),
                         "loo_spearman_vs_first": loo_rho, "neg_to_pos": neg_to_pos})
    return pd.DataFrame(rows)


def _batch_point(shared: dict, b: int | None, scored, gtol: float, method: str) -> tuple[list[dict], dict]:
    """One setting of :func:`batch_size_sweep` (a self-contained task): the rows of every scored
    variant and the score arrays (``loo`` too) that the comparisons with the first setting need."""
    n = np.shape(shared["x"])[0]
    obj = ContrastiveObjective(shared["param"], shared["x"], shared["y"],
                               BatchingProtocol.from_seed(n, b, shared["seed"]), lam=shared["lam"])
    scores: dict = {}
    _, rows = _refit_and_score(obj, shared["val_objective"], shared["loo_indices"], shared["mask"], scored, None,
                               gtol, method, scores)
    return rows, scores


def _spearman(a, b) -> float:
    return loo_agreement(a, b)["spearman"]


def _check_values(values, name: str) -> None:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list of values, got {values!r}.")
