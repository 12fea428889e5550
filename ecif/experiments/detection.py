"""Misalignment detection: every method's score for every training pair, and the metric table.

All scores follow the detection convention of :mod:`ecif.experiments.metrics` (**higher = more
suspicious**), float64 numpy ``(n,)`` in training-pair order:

* ``ecif``, ``newton``, ``positive``, ``negative``: ``harmfulness(IS) = -IS`` with ``IS`` the
  validation influence score of the variant (``IS < 0`` harmful, spec §3);
* ``self_<variant>``: self-influence ``grad Pos_k^T Delta theta_variant(k)``, the predicted
  change of the pair's own loss when it is removed (no validation set needed; a pair the model
  bends to fit has a large positive value), used as is;
* ``tracin``, ``pair_loss``, ``cosine``, ``random``: see :mod:`ecif.experiments.baselines`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ecif.experiments.baselines import (
    cosine_scores,
    harmfulness,
    pair_loss_scores,
    random_scores,
    tracin_scores,
)
from ecif.core.terms import VARIANTS
from ecif.experiments.metrics import detection_metrics

__all__ = ["DEFAULT_METHODS", "detection_scores", "detection_table", "self_influence_scores"]

#: Methods computed by :func:`detection_scores` by default, in reporting order.
DEFAULT_METHODS = (*VARIANTS, "self_ecif", "self_positive", "tracin", "pair_loss", "cosine", "random")


def self_influence_scores(engine, variant: str = "ecif", chunk: int = 256) -> np.ndarray:
    """Self-influence ``grad Pos_k^T Delta theta(k)`` of every pair, ``(n,)``, in chunks of
    ``chunk`` pairs (memory ``chunk * P`` at a time). Higher = more suspicious."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}.")
    n = engine.n
    out = np.empty(n)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        out[idx] = engine.self_influence(idx, variant=variant).numpy()
    return out


def detection_scores(engine, val_gradient, methods=DEFAULT_METHODS, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores ``(n,)`` of each method in ``methods`` (see the module docstring), keyed by name.

    ``engine`` is an :class:`~ecif.core.influence.ECIF` at ``theta_hat``; ``val_gradient`` is
    ``grad L_val(theta_hat)`` ``(P,)``; ``seed`` drives ``random``. Influence variants share one
    solve; self-influence costs ``n`` per-pair gradients and ``n`` solves (chunked)."""
    known = set(DEFAULT_METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {DEFAULT_METHODS}.")
    obj, theta = engine.objective, engine.theta_hat
    g = torch.as_tensor(val_gradient, dtype=torch.float64)
    variants = [m for m in methods if m in VARIANTS]
    out: dict[str, np.ndarray] = {}
    if variants:
        IS = engine.influence_scores(g, variants=variants)
        out.update({v: harmfulness(IS[v]) for v in variants})
    for m in methods:
        if m in out:
            continue
        if m.startswith("self_"):
            out[m] = self_influence_scores(engine, m[len("self_"):])
        elif m == "tracin":
            out[m] = tracin_scores(obj, theta, g)
        elif m == "pair_loss":
            out[m] = pair_loss_scores(obj, theta)
        elif m == "cosine":
            out[m] = cosine_scores(obj, theta)
        elif m == "random":
            out[m] = random_scores(obj.n, seed)
    return {m: out[m] for m in methods}


def detection_table(scores: dict, mask, k: int | None = None) -> pd.DataFrame:
    """One row per method: ``method``, ``k``, ``precision_at_k``, ``recall_at_k``, ``auroc``,
    ``average_precision`` (``k`` defaults to the number of misaligned pairs)."""
    if not scores:
        raise ValueError("scores is empty: pass a dict method -> (n,) scores.")
    rows = [{"method": name, **detection_metrics(s, mask, k)} for name, s in scores.items()]
    return pd.DataFrame(rows)
