"""Misalignment detection: the registry of detection methods, every method's score for every
training pair, the metric table and the precision/recall curves.

:data:`METHODS` is the one list of detection methods: every stage that scores pairs (the
``detect`` stage, each cell of the detection sweep, and through ``artifacts/detect/scores.csv``
the cleaning stage) reports the methods of :data:`DEFAULT_METHODS`, in that order. Each entry
names how its score is computed and says in one line what it measures.

All scores follow the detection convention of :mod:`ecif.experiments.metrics` (**higher = more
suspicious**), float64 numpy ``(n,)`` in training-pair order:

* ``ecif``, ``newton``, ``positive``, ``negative``: ``harmfulness(IS) = -IS`` with ``IS`` the
  validation influence score of the variant (``IS < 0`` harmful, docs/math.md §6); the four variants
  share one solve;
* ``self_<variant>``: self-influence ``grad Pos_k^T Delta theta_variant(k)``, the predicted
  change of the pair's own loss when it is removed (no validation set needed; a pair the model
  bends to fit has a large positive value), used as is;
* ``tracin``, ``pair_loss``, ``cosine``, ``random``: see :mod:`ecif.experiments.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ecif.core.terms import VARIANTS
from ecif.experiments.baselines import (
    cosine_scores,
    harmfulness,
    pair_loss_scores,
    random_scores,
    tracin_scores,
)
from ecif.experiments.metrics import detection_metrics, precision_recall_curve_at_ks

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "Method",
    "detection_curves",
    "detection_scores",
    "detection_table",
    "self_influence_scores",
]


def self_influence_scores(engine, variant: str = "ecif", chunk: int = 256) -> np.ndarray:
    """Self-influence ``grad Pos_k^T Delta theta(k)`` of every pair, ``(n,)``, in chunks of
    ``chunk`` pairs (memory ``chunk * P`` at a time). Higher = more suspicious."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}.")
    n = engine.n
    out = np.empty(n)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        out[idx] = engine.self_influence(idx, variant=variant).cpu().numpy()
    return out


class _Inputs:
    """What a method scores from: the engine at ``theta_hat``, ``grad L_val(theta_hat)`` and the
    seed of ``random``. The influence scores of the four variants are computed once, on demand."""

    def __init__(self, engine, val_gradient, seed: int):
        self.engine = engine
        self.objective, self.theta = engine.objective, engine.theta_hat
        self.val_gradient = torch.as_tensor(val_gradient, dtype=torch.float64, device=engine.theta_hat.device)
        self.seed = seed

    @cached_property
    def influence(self) -> dict:
        return self.engine.influence_scores(self.val_gradient, variants=VARIANTS)


@dataclass(frozen=True)
class Method:
    """A detection method: its ``name``, a one-line ``description`` and ``score``, which maps
    the scoring inputs to scores ``(n,)`` (higher = more suspicious)."""

    name: str
    description: str
    score: Callable[[_Inputs], np.ndarray]


def _influence(variant: str) -> Callable[[_Inputs], np.ndarray]:
    return lambda inp: harmfulness(inp.influence[variant])


def _self_influence(variant: str) -> Callable[[_Inputs], np.ndarray]:
    return lambda inp: self_influence_scores(inp.engine, variant)


_REGISTRY = (
    Method("positive", "-IS of the classical influence function (the pair's own, positive role)",
           _influence("positive")),
    Method("negative", "-IS of the pair's role as a negative of its batch only", _influence("negative")),
    Method("ecif", "-IS of ECIF (both roles, first order): the paper's method", _influence("ecif")),
    Method("newton", "-IS of the exact removal terms (both roles, one Newton step)", _influence("newton")),
    Method("self_ecif", "self-influence: predicted rise of the pair's own loss when ECIF removes it",
           _self_influence("ecif")),
    Method("self_positive", "self-influence with the classical influence function",
           _self_influence("positive")),
    Method("tracin", "-(1/n) grad T_k^T grad L_val: ECIF with the identity for the Hessian",
           lambda inp: tracin_scores(inp.objective, inp.theta, inp.val_gradient)),
    Method("pair_loss", "the pair's own contrastive loss at theta_hat",
           lambda inp: pair_loss_scores(inp.objective, inp.theta)),
    Method("cosine", "negative image-text cosine of the fine-tuned embeddings (the CLIP-score filter)",
           lambda inp: cosine_scores(inp.objective, inp.theta)),
    Method("random", "uniform random scores from the seed: the chance line",
           lambda inp: random_scores(inp.objective.n, inp.seed)),
)

#: The detection methods by name, in reporting order.
METHODS: dict[str, Method] = {m.name: m for m in _REGISTRY}

#: Every method of :data:`METHODS`: what every detection stage reports.
DEFAULT_METHODS = tuple(METHODS)


def detection_scores(engine, val_gradient, methods=DEFAULT_METHODS, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores ``(n,)`` of each method in ``methods`` (names of :data:`METHODS`), keyed by name.

    ``engine`` is an :class:`~ecif.core.influence.ECIF` at ``theta_hat``; ``val_gradient`` is
    ``grad L_val(theta_hat)`` ``(P,)``; ``seed`` drives ``random``. Influence variants share one
    solve; self-influence costs ``n`` per-pair gradients and ``n`` solves (chunked)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {DEFAULT_METHODS}.")
    inputs = _Inputs(engine, val_gradient, seed)
    return {m: METHODS[m].score(inputs) for m in methods}


def detection_table(scores: dict, mask, k: int | None = None) -> pd.DataFrame:
    """One row per method: ``method``, ``k``, ``precision_at_k``, ``recall_at_k``, ``auroc``,
    ``average_precision`` (``k`` defaults to the number of misaligned pairs)."""
    if not scores:
        raise ValueError("scores is empty: pass a dict method -> (n,) scores.")
    rows = [{"method": name, **detection_metrics(s, mask, k)} for name, s in scores.items()]
    return pd.DataFrame(rows)


def detection_curves(scores: dict, mask, ks=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide DataFrames ``(precision, recall)``: column ``k`` (default every ``k`` from 1 to
    ``n``) and one column per method of ``scores`` (ties averaged, see
    :func:`~ecif.experiments.metrics.precision_recall_curve_at_ks`)."""
    mask = np.asarray(mask, dtype=bool)
    ks = np.arange(1, len(mask) + 1) if ks is None else np.asarray(ks)
    prec, rec = pd.DataFrame({"k": ks}), pd.DataFrame({"k": ks})
    for name, s in scores.items():
        curve = precision_recall_curve_at_ks(s, mask, ks)
        prec[name] = curve["precision"].to_numpy()
        rec[name] = curve["recall"].to_numpy()
    return prec, rec
