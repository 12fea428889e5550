"""Data cleaning (the paper's Table 1): remove the most harmful pairs by a method, retrain,
compare test zero-shot accuracy with no deletion and with random deletions of the same size.

Retraining is warm-started from ``theta_hat`` (see :mod:`ecif.experiments.retraining` for why, and
``init="theta0"`` for the alternative).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ecif.experiments.retraining import retrain

__all__ = ["cleaning_table", "top_fraction"]


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


def cleaning_table(objective, theta_hat, scores: dict, evaluation, fraction: float = 0.1, mask=None,
                   random_seeds=(0, 1, 2), init: str = "warm", preconditioner=None,
                   gtol: float = 1e-9) -> pd.DataFrame:
    """Remove the top ``fraction`` by each method in ``scores`` (dict name -> ``(n,)`` detection
    scores), retrain, and evaluate; plus ``none`` (``theta_hat`` itself) and ``random`` deletions
    of the same size for each seed in ``random_seeds``.

    ``evaluation`` is a :class:`~ecif.experiments.zeroshot.ZeroShotSet` (test split). Returns one row per
    run: ``method``, ``seed`` (random only, else -1), ``n_removed``, ``n_misaligned_removed``
    (when ``mask`` is given), ``accuracy``, ``grad_norm``, ``converged``, ``seconds``.
    """
    n = objective.n
    m = round(fraction * n)
    top_fraction(np.zeros(n), fraction)  # validate fraction before any retraining
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {mask.shape}.")
    runs = [("none", -1, None)]
    runs += [(name, -1, top_fraction(s, fraction)) for name, s in scores.items()]
    runs += [("random", int(seed), np.random.default_rng(seed).choice(n, m, replace=False)) for seed in random_seeds]
    rows = []
    for name, seed, removed in runs:
        t0 = time.perf_counter()
        if removed is None:
            theta, gnorm, conv = theta_hat, float(objective.gradient(theta_hat).norm()), True
        else:
            res = retrain(objective, theta_hat, removed, init=init, gtol=gtol, preconditioner=preconditioner)
            theta, gnorm, conv = res.theta, res.grad_norm, res.converged
        rows.append({
            "method": name, "seed": seed, "n_removed": 0 if removed is None else len(removed),
            "n_misaligned_removed": (np.nan if mask is None else (0 if removed is None else int(mask[removed].sum()))),
            "accuracy": evaluation.accuracy(objective.param, theta),
            "grad_norm": gnorm, "converged": conv, "seconds": time.perf_counter() - t0,
        })
    return pd.DataFrame(rows)
