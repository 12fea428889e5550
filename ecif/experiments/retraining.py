"""Leave-out retraining: the kit's one ground truth (docs/math.md §3, §11), for single pairs and sets.

Every retraining minimises ``L_{-R}`` (same batching, ``1/n`` and regulariser) with the
deterministic Newton fit of :func:`ecif.core.fit.fit`, **warm-started from ``theta_hat``** by
default: that is ``theta_hat_{-R}`` of docs/math.md §3, the optimum in the basin of the fitted model, which
is what influence predicts. ``init="theta0"`` retrains from the starting point instead (the
fresh-training view; with ``lam > 0`` and a converged fit both usually reach the same optimum, but
normalised embeddings allow several basins). Passing the influence solver at ``theta_hat``
(undamped) as ``preconditioner`` makes each warm retraining cost a few Hessian solves and no new
Hessian; where the fixed Hessian stops fitting, the fit falls back to true Newton steps of
``method`` (``"auto"``: Newton-CG with a preconditioner, see :func:`~ecif.core.fit.fit`).

Leave-one-out tables, wherever they are made, have the columns of :data:`LOO_COLUMNS`:

==============  ======================================================================
``pair``        the training pair left out
``actual``      ``L_val(theta_hat_{-k}) - L_val(theta_hat)``
``grad_norm``   ``||grad L_{-k}||`` at the retrained optimum
``iterations``  Newton steps of the retraining
``converged``   ``grad_norm <= gtol``
``seconds``     wall time of the retraining (inside its task when distributed)
==============  ======================================================================

:func:`loo_experiment` adds ``misaligned`` and one column per influence variant (the predicted
``IS(k)``).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ecif.core.evaluate import validation_gradient, validation_loss
from ecif.core.fit import FitResult, fit
from ecif.core.influence import ECIF, VARIANTS
from ecif.experiments.distributed import retrain_many
from ecif.experiments.metrics import loo_agreement

__all__ = ["LOO_COLUMNS", "loo_experiment", "loo_metrics", "loo_val_changes", "retrain", "sample_loo_pairs"]

#: Columns of every leave-one-out table (see the module docstring).
LOO_COLUMNS = ("pair", "actual", "grad_norm", "iterations", "converged", "seconds")


def retrain(objective, theta_hat: torch.Tensor, remove, *, init: str = "warm", gtol: float = 1e-9,
            max_iter: int = 200, method: str = "auto", preconditioner=None, subsample: int | None = None,
            progress=None, precondition: int | None = None, precision: str = "float64") -> FitResult:
    """``argmin L_{-R}``; ``remove`` is an index array or a boolean mask ``(n,)``.

    ``init``: ``"warm"`` (from ``theta_hat``, default) or ``"theta0"`` (from the start). The
    preconditioner is only used for warm starts (it is the Hessian at ``theta_hat``). ``method``
    (``"newton"``, ``"newton-cg"`` or ``"auto"``) is the Newton step used without a
    preconditioner, or once the preconditioned steps stall. ``subsample`` and ``progress``: as in
    :func:`~ecif.core.fit.fit` (a subsample start applies to ``init="theta0"`` only), as are
    ``precondition`` (a spectral preconditioner of the Newton-CG steps from a subsample) and
    ``precision`` (float32 products in those steps), used for cold retraining at large ``n``."""
    if init not in ("warm", "theta0"):
        raise ValueError(f"init must be 'warm' or 'theta0', got {init!r}.")
    obj = objective.without(remove)
    start = theta_hat if init == "warm" else None  # None: fit starts at theta0
    return fit(obj, theta_init=start, gtol=gtol, max_iter=max_iter, method=method,
               preconditioner=preconditioner if init == "warm" else None, subsample=subsample,
               progress=progress, precondition=precondition, precision=precision)


def loo_val_changes(objective, theta_hat: torch.Tensor, val_objective, indices, *, gtol: float = 1e-9,
                    max_iter: int = 200, method: str = "auto", preconditioner=None, client=None,
                    progress: bool = True) -> pd.DataFrame:
    """Leave-one-out ground truth: retrain without each pair ``k`` in ``indices`` (warm start,
    :func:`retrain`) and measure the validation-loss change.

    ``client``: a Dask client (:func:`ecif.experiments.distributed.connect`) to run the refits as
    tasks, the data scattered once; ``None`` runs them here. Both give bit-identical results
    (:func:`ecif.experiments.distributed.retrain_many`). ``progress``: sparse ``refit i/N`` lines.

    Returns a DataFrame with one row per pair and the columns :data:`LOO_COLUMNS`."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("indices is empty: pick at least one pair to leave out.")
    results = retrain_many(objective, theta_hat, [[int(k)] for k in idx], val_objective=val_objective,
                           client=client, gtol=gtol, max_iter=max_iter, method=method,
                           preconditioner=preconditioner, progress=progress)
    rows = [{"pair": int(k), **{c: r[c] for c in LOO_COLUMNS[1:]}} for k, r in zip(idx, results)]
    return pd.DataFrame(rows, columns=list(LOO_COLUMNS))


def sample_loo_pairs(mask, n_pairs: int, n_misaligned: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n_pairs`` train pairs, ``n_misaligned`` of them misaligned (seeded).

    Both counts are capped by what the split holds.
    """
    mask = np.asarray(mask, dtype=bool)
    rng = np.random.default_rng(seed)
    bad, good = np.flatnonzero(mask), np.flatnonzero(~mask)
    n_bad = min(n_misaligned, len(bad), n_pairs)
    n_good = min(n_pairs - n_bad, len(good))
    idx = np.concatenate(
        [rng.choice(bad, n_bad, replace=False), rng.choice(good, n_good, replace=False)]
    )
    return np.sort(idx.astype(np.int64))


def loo_experiment(objective, val_objective, theta_hat: torch.Tensor, indices, *, mask=None,
                   gtol: float = 1e-9, max_iter: int = 200, method: str = "auto",
                   variants=VARIANTS, client=None, progress: bool = True,
                   solver: str = "dense") -> tuple[pd.DataFrame, dict]:
    """Predicted influence against leave-one-out retraining for the pairs ``indices``.

    Computes ECIF from scratch (``solver``: ``"dense"`` Hessian at ``theta_hat`` or matrix-free
    ``"cg"``; one solve, every pair scored: that is the timed ``ecif_all_pairs_s``), then
    retrains ``L_{-k}`` for each ``k`` in ``indices`` with :func:`loo_val_changes` (warm start,
    ``gtol``, ``max_iter`` and fallback ``method`` as in :func:`retrain`; with the dense solver it
    is the refits' preconditioner, a CG solver is not: each preconditioned step would cost a
    full solve, more than a Newton-CG step); with a Dask ``client`` the refits run as tasks (same
    results, see :func:`loo_val_changes`).

    Returns ``(table, info)``: a DataFrame with one row per pair, the columns
    :data:`LOO_COLUMNS` plus ``misaligned`` (from ``mask``, ``False`` without one) and one
    column per variant with the predicted ``IS(k)``; and a dict with the timings
    (``ecif_all_pairs_s``, ``retrain_one_s`` = median retraining, ``retrain_total_s``), the
    solver report, the influence scores of *all* pairs (``scores``) and ``val_loss``.
    """
    start = time.perf_counter()
    engine = ECIF(objective, theta_hat, solver=solver, damping=0.0)
    scores = engine.influence_scores(validation_gradient(val_objective, theta_hat), variants)
    ecif_seconds = time.perf_counter() - start

    table = loo_val_changes(objective, theta_hat, val_objective, indices, gtol=gtol, max_iter=max_iter,
                            method=method, preconditioner=engine.solver if solver == "dense" else None,
                            client=client, progress=progress)
    pairs = table["pair"].to_numpy()
    mask = np.zeros(objective.n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    table.insert(1, "misaligned", mask[pairs])
    for v in variants:
        table[v] = scores[v].cpu().numpy()[pairs]
    seconds = table["seconds"].to_numpy()
    info = {
        "ecif_all_pairs_s": ecif_seconds,
        "retrain_one_s": float(np.median(seconds)),
        "retrain_total_s": float(np.sum(seconds)),
        "solver": dict(engine.solver.report),
        "scores": {v: scores[v].cpu().numpy() for v in variants},
        "val_loss": validation_loss(val_objective, theta_hat),
    }
    return table, info


def loo_metrics(table: pd.DataFrame, variants=VARIANTS) -> dict:
    """``{variant: {"pearson", "spearman"}}`` of the predicted ``IS`` columns of a
    :func:`loo_experiment` table against ``actual``."""
    out = {}
    for v in variants:
        agree = loo_agreement(table[v].to_numpy(), table["actual"].to_numpy())
        out[v] = {"pearson": agree["pearson"], "spearman": agree["spearman"]}
    return out
