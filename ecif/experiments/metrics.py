"""Detection and agreement metrics.

Convention, shared by every detection score in the kit: **a higher score means more suspicious
(more harmful)**, and ``mask`` is the ground-truth boolean array ``(n,)``, ``True`` where a pair
is misaligned. Influence scores ``IS`` (negative = harmful) are converted with
:func:`ecif.experiments.baselines.harmfulness` (``-IS``) before they reach these functions.

Ties. A ranking by score is ambiguous when scores tie. Every top-k metric here is the
**expectation over a uniformly random order inside tied groups**: pairs scoring strictly above
the k-th largest score count fully, and the tied group at the cut-off contributes its fraction
of misaligned pairs for the remaining slots. So the result is deterministic, does not depend on
the order of the pairs, and a constant score gives exactly the base rate. AUROC counts a tied
(positive, negative) pair as 1/2 (Mann-Whitney); average precision treats a tied group as one
threshold (scikit-learn's step-wise definition, no interpolation).

Scores and masks may be numpy arrays, torch tensors or lists; they are validated (same length,
finite scores, at least one misaligned and one clean pair) before any work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "auroc",
    "average_precision",
    "detection_metrics",
    "loo_agreement",
    "precision_at_k",
    "precision_recall_curve_at_ks",
    "recall_at_k",
]


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check(scores, mask, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores)
    m = _to_numpy(mask)
    if s.ndim != 1:
        raise ValueError(f"scores must be a 1-D array (n,), got shape {s.shape}.")
    if m.ndim != 1:
        raise ValueError(f"mask must be a 1-D boolean array (n,), got shape {m.shape}.")
    if s.shape != m.shape:
        raise ValueError(f"scores and mask must have the same length, got {s.shape[0]} and {m.shape[0]}.")
    if s.size == 0:
        raise ValueError("scores and mask are empty.")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"mask must be boolean (or 0/1), got dtype {m.dtype} with other values.")
        m = m.astype(bool)
    if not np.issubdtype(s.dtype, np.number) or s.dtype == bool:
        raise TypeError(f"scores must be numeric, got dtype {s.dtype}.")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/Inf value(s).")
    if not m.any():
        raise ValueError("mask has no misaligned pair (all False): detection metrics are undefined.")
    if need_both and m.all():
        raise ValueError("mask marks every pair as misaligned: AUROC/AP are undefined.")
    return s, m


def _check_ks(ks, n: int) -> np.ndarray:
    k = np.atleast_1d(_to_numpy(ks))
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f"ks must be an integer or a non-empty 1-D list of integers, got shape {k.shape}.")
    if not (np.issubdtype(k.dtype, np.integer) or (np.issubdtype(k.dtype, np.floating) and (k == np.round(k)).all())):
        raise ValueError(f"k must be integer(s), got {k.tolist()[:5]}.")
    k = k.astype(np.int64)
    if k.min() < 1 or k.max() > n:
        raise ValueError(f"k must lie in [1, n={n}], got range [{k.min()}, {k.max()}].")
    return k


def _expected_hits(s: np.ndarray, m: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Expected number of misaligned pairs among the top ``k`` (ties averaged), for each k."""
    asc = np.sort(s)
    pos_asc = np.sort(s[m])
    n, n_pos = s.size, pos_asc.size
    thr = asc[n - ks]  # k-th largest score
    n_above = n - np.searchsorted(asc, thr, side="right")
    n_tie = n - np.searchsorted(asc, thr, side="left") - n_above
    p_above = n_pos - np.searchsorted(pos_asc, thr, side="right")
    p_tie = n_pos - np.searchsorted(pos_asc, thr, side="left") - p_above
    return p_above + (ks - n_above) * p_tie / n_tie


def precision_at_k(scores, mask, k: int) -> float:
    """Fraction of misaligned pairs among the ``k`` highest scores (ties averaged), in [0, 1].

    ``1 <= k <= n``; the usual choice is ``k = mask.sum()``, where precision@k = recall@k.
    """
    s, m = _check(scores, mask, need_both=False)
    ks = _check_ks(k, s.size)
    if ks.size != 1:
        raise ValueError("k must be a single integer; use precision_recall_curve_at_ks for several.")
    return float(_expected_hits(s, m, ks)[0] / ks[0])


def recall_at_k(scores, mask, k: int) -> float:
    """Fraction of all misaligned pairs found among the ``k`` highest scores (ties averaged)."""
    s, m = _check(scores, mask, need_both=False)
    ks = _check_ks(k, s.size)
    if ks.size != 1:
        raise ValueError("k must be a single integer; use precision_recall_curve_at_ks for several.")
    return float(_expected_hits(s, m, ks)[0] / m.sum())


def precision_recall_curve_at_ks(scores, mask, ks) -> pd.DataFrame:
    """Precision@k and recall@k for every ``k`` in ``ks`` (vectorised, ties averaged).

    Returns a DataFrame with columns ``k`` (int), ``precision``, ``recall``, one row per k in
    the order given.
    """
    s, m = _check(scores, mask, need_both=False)
    k = _check_ks(ks, s.size)
    hits = _expected_hits(s, m, k)
    return pd.DataFrame({"k": k, "precision": hits / k, "recall": hits / m.sum()})


def auroc(scores, mask) -> float:
    """Area under the ROC curve of ``scores`` for ``mask`` (0.5 = chance, 1 = every misaligned
    pair above every clean one; ties count 1/2)."""
    s, m = _check(scores, mask)
    return float(roc_auc_score(m, s))


def average_precision(scores, mask) -> float:
    """Average precision ``sum_j (R_j - R_{j-1}) P_j`` over score thresholds (scikit-learn's
    definition, tied scores form one threshold). Chance level is the misaligned fraction."""
    s, m = _check(scores, mask)
    return float(average_precision_score(m, s))


def detection_metrics(scores, mask, k: int | None = None) -> dict:
    """All detection metrics of one score vector: ``precision_at_k``, ``recall_at_k``, ``auroc``,
    ``average_precision``, and the ``k`` used (default ``k = mask.sum()``, the number injected)."""
    s, m = _check(scores, mask)
    k = int(m.sum()) if k is None else k
    return {
        "k": int(k),
        "precision_at_k": precision_at_k(s, m, k),
        "recall_at_k": recall_at_k(s, m, k),
        "auroc": auroc(s, m),
        "average_precision": average_precision(s, m),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _average_ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # average rank of each tied group (ranks start at 1)
    first = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], a.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(a.size)
    ranks[order] = avg[group]
    return ranks


def loo_agreement(predicted, actual) -> dict:
    """Agreement of predicted with actual (e.g. ``IS(k)`` vs ``L_val(theta_{-k}) - L_val(theta)``).

    Returns ``{"pearson": r, "spearman": rho, "n": len}``; Spearman uses average ranks for ties.
    A constant input gives ``nan`` (correlation undefined), never an exception. Needs at least
    3 finite values of equal length.
    """
    p = _to_numpy(predicted).astype(np.float64).reshape(-1) if np.ndim(_to_numpy(predicted)) <= 1 else None
    a = _to_numpy(actual).astype(np.float64).reshape(-1) if np.ndim(_to_numpy(actual)) <= 1 else None
    if p is None or a is None:
        raise ValueError("predicted and actual must be 1-D arrays.")
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual must have the same length, got {p.size} and {a.size}.")
    if p.size < 3:
        raise ValueError(f"need at least 3 values for a correlation, got {p.size}.")
    if not (np.isfinite(p).all() and np.isfinite(a).all()):
        raise ValueError("predicted and actual must be finite (a retraining diverged, or a solve failed?).")
    return {
        "pearson": _pearson(p, a),
        "spearman": _pearson(_average_ranks(p), _average_ranks(a)),
        "n": int(p.size),
    }
