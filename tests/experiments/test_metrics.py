"""Detection and agreement metrics: hand-computed values, scikit-learn, ties, errors."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from ecif.experiments.metrics import (
    auroc,
    average_precision,
    detection_metrics,
    loo_agreement,
    precision_at_k,
    precision_recall_curve_at_ks,
    recall_at_k,
)

SCORES = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2])
MASK = np.array([True, False, False, True, True, False])


def test_precision_recall_hand_computed():
    # ranking: 0 (T), 2 (F), 4 (T), 3 (T), 5 (F), 1 (F)
    assert precision_at_k(SCORES, MASK, 1) == 1.0
    assert precision_at_k(SCORES, MASK, 2) == 0.5
    assert precision_at_k(SCORES, MASK, 3) == pytest.approx(2 / 3)
    assert recall_at_k(SCORES, MASK, 3) == pytest.approx(2 / 3)
    assert recall_at_k(SCORES, MASK, 4) == 1.0
    assert precision_at_k(SCORES, MASK, 6) == 0.5


def test_curve_matches_scalar_functions_and_columns():
    df = precision_recall_curve_at_ks(SCORES, MASK, [1, 2, 3, 4, 5, 6])
    assert list(df.columns) == ["k", "precision", "recall"]
    np.testing.assert_allclose(df.precision, [precision_at_k(SCORES, MASK, k) for k in range(1, 7)])
    np.testing.assert_allclose(df.recall, [1 / 3, 1 / 3, 2 / 3, 1, 1, 1])


def test_ties_are_averaged_and_order_independent():
    s = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    m = np.array([True, False, False, False, True])
    # top-2 lies inside the tied group of 4 holding 1 positive: expected 2 * 1/4 hits
    assert precision_at_k(s, m, 2) == pytest.approx(0.25)
    perm = np.array([3, 1, 4, 0, 2])
    assert precision_at_k(s[perm], m[perm], 2) == pytest.approx(0.25)
    # a constant score gives the base rate at every k
    df = precision_recall_curve_at_ks(np.zeros(10), np.arange(10) < 3, np.arange(1, 11))
    np.testing.assert_allclose(df.precision, 0.3)


def test_auroc_ap_against_sklearn_with_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # many ties
    m = rng.random(300) < 0.2 + 0.3 * (s > 0.5)
    assert auroc(s, m) == pytest.approx(roc_auc_score(m, s))
    assert average_precision(s, m) == pytest.approx(average_precision_score(m, s))
    # hand value: perfect separation
    assert auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert average_precision([3, 2, 1, 0], [True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)


def test_precision_matches_brute_force_random_tie_breaking():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 4, size=12).astype(float)
    m = rng.random(12) < 0.4
    m[0] = True
    for k in (1, 3, 5, 12):
        brute = np.mean([m[np.lexsort((rng.random(12), -s))[:k]].mean() for _ in range(20000)])
        assert precision_at_k(s, m, k) == pytest.approx(brute, abs=0.01)


def test_torch_inputs_and_detection_metrics():
    d = detection_metrics(torch.tensor(SCORES), torch.tensor(MASK))
    assert d["k"] == 3 and d["precision_at_k"] == pytest.approx(2 / 3) == d["recall_at_k"]
    assert set(d) == {"k", "precision_at_k", "recall_at_k", "auroc", "average_precision"}


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        precision_at_k(SCORES, MASK[:-1], 1)
    with pytest.raises(ValueError, match="no misaligned"):
        auroc(SCORES, np.zeros(6, bool))
    with pytest.raises(ValueError, match="every pair"):
        auroc(SCORES, np.ones(6, bool))
    with pytest.raises(ValueError, match=r"\[1, n=6\]"):
        precision_at_k(SCORES, MASK, 0)
    with pytest.raises(ValueError, match=r"\[1, n=6\]"):
        precision_recall_curve_at_ks(SCORES, MASK, [1, 7])
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5]), MASK)
    with pytest.raises(ValueError, match="boolean"):
        auroc(SCORES, np.array([0, 2, 0, 1, 1, 0]))
    with pytest.raises(ValueError, match="1-D"):
        auroc(SCORES[:, None], MASK)


def test_loo_agreement_against_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=50)
    p = a + 0.5 * rng.normal(size=50)
    p[:5] = p[0]  # ties
    out = loo_agreement(p, a)
    assert out["pearson"] == pytest.approx(pearsonr(p, a)[0])
    assert out["spearman"] == pytest.approx(spearmanr(p, a)[0])
    assert out["n"] == 50
    assert np.isnan(loo_agreement(np.ones(5), a[:5])["pearson"])
    with pytest.raises(ValueError, match="same length"):
        loo_agreement(p, a[:-1])
    with pytest.raises(ValueError, match="at least 3"):
        loo_agreement([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        loo_agreement([1.0, np.inf, 2.0], [1.0, 2.0, 3.0])
