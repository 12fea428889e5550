"""Data cleaning (the paper's Table 1): remove the most harmful pairs by a method, retrain,
compare test zero-shot accuracy with no deletion and with random deletions of the same size.

Retraining is warm-started from ``theta_hat`` (see :mod:`ecif.experiments.retraining` for why, and
``init="theta0"`` for the alternative).

Two reference rows bound the table (issue 13): ``clean``, the model fitted on the same train pairs
with their true captions (the features' ``y_train_clean``), and ``oracle``, the deletion of exactly
the injected pairs. :func:`separation` says whether the gap between no deletion and the oracle
is larger than the seed-to-seed spread of the random deletions; when it is not, the table cannot
rank the methods. :func:`cleaning_curve` repeats the deletions at several removal fractions.
:func:`cleaning_runs` does both for several fits (one per noise seed), so that the spread of every
row covers which pairs were corrupted as well as the random deletions' seeds.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ecif.core.fit import fit
from ecif.experiments.distributed import retrain_many

__all__ = ["cleaning_curve", "cleaning_runs", "cleaning_table", "oracle_removal", "separation", "table_separation", "top_fraction"]


def top_fraction(scores, fraction: float) -> np.ndarray:
    """Indices of the ``round(fraction * n)`` highest scores (higher = more harmful), sorted by
    decreasing score; ties broken by lower index first (stable), so the set is deterministic."""
    scores = scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores  # scores on a GPU
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    m = round(fraction * s.size)
    if m < 1:
        raise ValueError(f"fraction {fraction} of {s.size} pairs removes nothing.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/Inf.")
    return np.argsort(-s, kind="stable")[:m]


def oracle_removal(mask, k: int | None = None) -> np.ndarray:
    """The oracle's removal set: the injected pairs (``mask``), all of them (``k=None``) or, at a
    removal budget of ``k`` pairs, the first ``min(k, n_injected)`` injected pairs in index order
    (the oracle never removes a clean pair, so it may remove fewer than ``k``)."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    return idx if k is None else idx[:max(0, min(int(k), idx.size))]


def separation(acc_none: float, acc_oracle: float, random_accs, n_std: float = 2.0) -> dict:
    """Can the cleaning experiment tell methods apart? ``gap`` = accuracy(oracle) -
    accuracy(none); ``random_std`` = the sample std (ddof 1) of the random deletions' accuracies
    over seeds. ``separable`` when ``gap > n_std * random_std`` (and at least two seeds; a gap of
    zero or below never separates). ``statement`` is the sentence the notebook prints."""
    accs = np.asarray(random_accs, dtype=np.float64).reshape(-1)
    gap = float(acc_oracle) - float(acc_none)
    std = float(np.std(accs, ddof=1)) if accs.size >= 2 else float("nan")
    separable = bool(np.isfinite(std) and gap > 0 and gap > n_std * std)
    if separable:
        statement = (f"the experiment can separate methods: the oracle gap {gap:+.4f} exceeds {n_std:g} x the "
                     f"random deletions' seed-to-seed std {std:.4f}")
    else:
        why = "fewer than two random seeds" if not np.isfinite(std) else f"{n_std:g} x std = {n_std * std:.4f}"
        statement = f"gap within noise: methods are not ranked (oracle gap {gap:+.4f}, {why})"
    return {"gap": gap, "random_std": std, "separable": separable, "statement": statement}


def table_separation(clean: pd.DataFrame, n_std: float = 2.0) -> dict:
    """:func:`separation` of a :func:`cleaning_table`: ``none``'s accuracy, the ``oracle``'s
    (NaN without one, which never separates) and the ``random`` rows' accuracies."""
    acc = clean.groupby("method")["accuracy"]
    oracle = float(acc.mean()["oracle"]) if "oracle" in acc.groups else float("nan")
    randoms = clean.loc[clean["method"] == "random", "accuracy"].to_numpy()
    return separation(float(acc.mean()["none"]), oracle, randoms, n_std=n_std)


def _run(objective, theta_hat, runs, evaluation, mask, init, gtol, preconditioner, client=None) -> list[dict]:
    """One row per ``(method, seed, removed)`` run (``removed=None``: ``theta_hat`` itself). The
    refits go through :func:`ecif.experiments.distributed.retrain_many`: serial without
    ``client``, one Dask task each with it (the same numbers either way); ``seconds`` is the
    refit's own wall time."""
    refits = [r for r in runs if r[2] is not None]
    done = iter(retrain_many(objective, theta_hat, [r[2] for r in refits], client=client, init=init, gtol=gtol,
                             preconditioner=preconditioner, keep_theta=True, label="cleaning refit",
                             progress=len(refits) > 1))
    rows = []
    for name, seed, removed in runs:
        if removed is None:
            t0 = time.perf_counter()
            theta, gnorm, conv = theta_hat, float(objective.gradient(theta_hat).norm()), True
            seconds = time.perf_counter() - t0
        else:
            res = next(done)
            theta, gnorm, conv, seconds = res["theta"], res["grad_norm"], res["converged"], res["seconds"]
        rows.append({
            "method": name, "seed": seed, "n_removed": 0 if removed is None else len(removed),
            "n_misaligned_removed": (np.nan if mask is None else (0 if removed is None else int(mask[removed].sum()))),
            "accuracy": evaluation.accuracy(objective.param, theta),
            "grad_norm": gnorm, "converged": conv, "seconds": seconds,
        })
    return rows


def _check_mask(mask, n):
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {mask.shape}.")
    return mask


def cleaning_table(objective, theta_hat, scores: dict, evaluation, fraction: float = 0.1, mask=None,
                   random_seeds=(0, 1, 2), init: str = "warm", preconditioner=None,
                   gtol: float = 1e-9, clean_objective=None, client=None) -> pd.DataFrame:
    """Remove the top ``fraction`` by each method in ``scores`` (dict name -> ``(n,)`` detection
    scores), retrain, and evaluate; plus ``none`` (``theta_hat`` itself) and ``random`` deletions
    of the same size for each seed in ``random_seeds``; plus the references ``oracle`` (when
    ``mask`` marks injected pairs: all of them removed, whatever ``fraction``) and ``clean``
    (when ``clean_objective`` is given: ``L`` on the same pairs with their true captions, fitted
    from the same start as the retrainings, ``theta_hat`` for ``init="warm"``, without the
    preconditioner, which is the corrupted problem's Hessian).

    ``evaluation`` is a :class:`~ecif.experiments.zeroshot.ZeroShotSet` (test split). Returns one row per
    run: ``method``, ``seed`` (random only, else -1), ``n_removed``, ``n_misaligned_removed``
    (when ``mask`` is given), ``accuracy``, ``grad_norm``, ``converged``, ``seconds``.
    """
    n = objective.n
    m = round(fraction * n)
    top_fraction(np.zeros(n), fraction)  # validate fraction before any retraining
    mask = _check_mask(mask, n)
    runs = [("none", -1, None)]
    runs += [(name, -1, top_fraction(s, fraction)) for name, s in scores.items()]
    runs += [("random", int(seed), np.random.default_rng(seed).choice(n, m, replace=False)) for seed in random_seeds]
    if mask is not None and mask.any():
        runs.append(("oracle", -1, oracle_removal(mask)))
    rows = _run(objective, theta_hat, runs, evaluation, mask, init, gtol, preconditioner, client)
    if clean_objective is not None:
        t0 = time.perf_counter()
        res = fit(clean_objective, theta_init=theta_hat if init == "warm" else clean_objective.theta0, gtol=gtol,
                  max_iter=200, method="auto")
        rows.append({"method": "clean", "seed": -1, "n_removed": 0,
                     "n_misaligned_removed": np.nan if mask is None else 0,
                     "accuracy": evaluation.accuracy(clean_objective.param, res.theta), "grad_norm": res.grad_norm,
                     "converged": res.converged, "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def cleaning_curve(objective, theta_hat, scores: dict, evaluation, fractions=(0.05, 0.1, 0.2), mask=None,
                   random_seeds=(0, 1, 2), init: str = "warm", preconditioner=None,
                   gtol: float = 1e-9, client=None) -> pd.DataFrame:
    """The removal-fraction curve: for each ``fraction`` (``k = round(fraction * n)`` pairs), the
    rows of :func:`cleaning_table` (``none``, each method's top ``k``, ``random`` per seed) plus
    ``oracle``, which removes :func:`oracle_removal` ``(mask, k)``: the first ``min(k, n_injected)``
    injected pairs. One row per (fraction, run), the columns of :func:`cleaning_table` after a
    leading ``fraction``; ``none`` is evaluated once and repeated at every fraction."""
    n = objective.n
    mask = _check_mask(mask, n)
    for f in fractions:
        top_fraction(np.zeros(n), f)  # validate every fraction before any retraining
    none = _run(objective, theta_hat, [("none", -1, None)], evaluation, mask, init, gtol, preconditioner)[0]
    rows = []
    for f in fractions:
        k = round(f * n)
        runs = [(name, -1, top_fraction(s, f)) for name, s in scores.items()]
        runs += [("random", int(seed), np.random.default_rng(seed).choice(n, k, replace=False)) for seed in random_seeds]
        if mask is not None and mask.any():
            runs.append(("oracle", -1, oracle_removal(mask, k)))
        rows += [{"fraction": float(f), **r} for r in [none] + _run(objective, theta_hat, runs, evaluation, mask,
                                                                     init, gtol, preconditioner, client)]
    return pd.DataFrame(rows)


def cleaning_runs(fits: dict, fraction: float = 0.1, fractions=(0.05, 0.1, 0.2), random_seeds=(0, 1, 2),
                  init: str = "warm", gtol: float = 1e-9, client=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`cleaning_table` (with the ``oracle`` and ``clean`` rows) and :func:`cleaning_curve`
    of several fits: ``fits`` maps a noise seed to ``(problem, theta_hat, engine, scores)``
    (a :class:`~ecif.kit.problem.Problem`, its optimum, the :class:`~ecif.core.influence.ECIF`
    whose factorised Hessian preconditions the retrainings, and the detection scores by method).
    Returns ``(table, curve)``, each with a leading ``noise_seed`` column; grouped by method, the
    rows of all fits pool, so a method's std is over noise seeds (and random seeds for
    ``random``), and :func:`table_separation` compares the oracle gap with that pooled spread."""
    tables, curves = [], []
    for noise_seed, (problem, theta_hat, engine, scores) in fits.items():
        common = dict(mask=problem.mask, random_seeds=random_seeds, init=init, preconditioner=engine.solver, gtol=gtol,
                      client=client)
        t = cleaning_table(problem.objective, theta_hat, scores, problem.test_set, fraction=fraction,
                           clean_objective=problem.clean_objective(), **common)
        c = cleaning_curve(problem.objective, theta_hat, scores, problem.test_set, fractions=fractions, **common)
        tables.append(t.assign(noise_seed=int(noise_seed))[["noise_seed", *t.columns]])
        curves.append(c.assign(noise_seed=int(noise_seed))[["noise_seed", *c.columns]])
    if not tables:
        raise ValueError("cleaning_runs needs at least one fit.")
    return pd.concat(tables, ignore_index=True), pd.concat(curves, ignore_index=True)
