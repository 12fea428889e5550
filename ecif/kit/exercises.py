"""The check cells of the notebooks' exercises that recompute something with the kit's math.

Each ``exercise_*`` helper runs the cheap variant an exercise asks about (seconds: no retraining:
the saved Hessian, the saved scores, one edit) and returns the comparison as sentences for
:func:`ecif.kit.findings.show`. They live apart from :mod:`ecif.kit.findings` (sentences from
numbers, no math) so that the early stages, whose notebooks use only the findings, do not depend on
``ecif/core`` and ``ecif/experiments``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def exercise_damping(fitted, loo: pd.DataFrame, mu: float, stats: dict) -> list[str]:
    """Exercise: ECIF with ``(H + μI)⁻¹`` (the saved Hessian of ``fitted``, no recomputation)
    against the leave-one-out truth ``loo`` (``pair``, ``actual``), next to the undamped
    ``stats["ecif"]`` (``spearman``, ``pearson``)."""
    from ecif.core.evaluate import validation_gradient
    from ecif.experiments.sensitivity import score_rows
    g = validation_gradient(fitted.problem.val, fitted.theta_hat)
    row = score_rows(fitted.engine(damping=mu), g, loo=loo, mask=fitted.problem.mask, variants=("ecif",))[0]
    return [f"ECIF vs leave-one-out: Spearman {stats['ecif']['spearman']:.3f} without damping, {row['spearman']:.3f} "
            f"with μ = {mu:g}; Pearson {stats['ecif']['pearson']:.3f} -> {row['pearson']:.3f}."]


def exercise_k(scores: dict, mask, factor: float, methods=("ecif", "cosine")) -> list[str]:
    """Exercise: precision and recall at ``k`` and at ``factor × k`` (k = number misaligned)."""
    from ecif.experiments.detection import detection_table
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    k2 = max(1, int(round(factor * k)))
    a = detection_table(scores, mask).set_index("method")
    b = detection_table(scores, mask, k=k2).set_index("method")
    return [f"{m:8s} k = {k}: precision {a.loc[m, 'precision_at_k']:.3f}, recall {a.loc[m, 'recall_at_k']:.3f};  "
            f"k = {k2}: precision {b.loc[m, 'precision_at_k']:.3f}, recall {b.loc[m, 'recall_at_k']:.3f}"
            for m in methods if m in a.index]


def exercise_random(mask, seeds=(1, 2, 3)) -> list[str]:
    """Exercise: random scores under other seeds: AUROC near 0.5, precision@k near the base rate."""
    from ecif.experiments.metrics import auroc, precision_at_k
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    rows = [(auroc(s, mask), precision_at_k(s, mask, k))
            for s in (np.random.default_rng(seed).random(len(mask)) for seed in seeds)]
    au, pr = np.array(rows).T
    return [f"random scores, seeds {list(seeds)}: AUROC {au.mean():.3f} ± {au.std():.3f}, precision@k "
            f"{pr.mean():.3f} ± {pr.std():.3f} (base rate {k / len(mask):.3f})."]


# ------------------------------------------------------------------------------- 06 sweep
def exercise_sweep_subset(long: pd.DataFrame, **select) -> list[str]:
    """Exercise: the winners (:func:`ecif.kit.reports.sweep_winners`) on a subset of the sweep's
    long table: ``rate=0.1`` keeps one rate, ``exclude=["cosine"]`` drops methods."""
    from ecif.kit.reports import sweep_winners
    exclude = select.pop("exclude", ())
    part = long[~long["method"].isin(exclude)]
    for col, val in select.items():
        part = part[part[col] == val]
    full, sub = sweep_winners(long), sweep_winners(part)
    what = ", ".join([f"{c} = {v}" for c, v in select.items()] + [f"{', '.join(exclude)} left out"] * bool(exclude))
    return [f"{kind}: winner by AUROC {full.loc[kind, 'winner_auroc']} ({full.loc[kind, 'auroc']:.3f}) on the whole "
            f"sweep, {sub.loc[kind, 'winner_auroc']} ({sub.loc[kind, 'auroc']:.3f}) with {what}" for kind in sub.index]


# ---------------------------------------------------------------------------- 07 ablation
def exercise_half_set(engine, val, scores, m: int, variant: str = "ecif") -> list[str]:
    """Exercise: the predicted validation-loss change of removing the ``m`` highest-scoring pairs,
    and of each half of that set (first order: the prediction is additive over removed pairs)."""
    from ecif.core.evaluate import validation_gradient
    g = validation_gradient(val, engine.theta_hat)
    remove = np.argsort(-np.asarray(scores), kind="stable")[:m]
    full = engine.predicted_change(g, remove, variant)
    half = engine.predicted_change(g, remove[: m // 2], variant)
    rest = engine.predicted_change(g, remove[m // 2:], variant)
    return [f"predicted change: whole set ({m} pairs) {full:+.4f}; first half {half:+.4f}; second half "
            f"{rest:+.4f}; halves summed {half + rest:+.4f}."]


# --------------------------------------------------------------------------- 09 traceback
def exercise_culprit_overlap(engine, test, item: int, k: int) -> list[str]:
    """Exercise: how many of the top-``k`` culprits of one item RIS and IS share."""
    from ecif.experiments.misprediction import culprit_scores
    g = test.subset([int(item)]).item_gradients(engine.objective.param, engine.theta_hat)[:, 0]
    s = culprit_scores(engine, g)
    top = {m: set(np.argsort(-v, kind="stable")[:k].tolist()) for m, v in s.items()}
    return [f"test item {int(item)}: the top {k} culprits by RIS and by IS share {len(top['ris'] & top['is'])} of them."]
