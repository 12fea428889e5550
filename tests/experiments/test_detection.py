"""The registry of detection methods, their scores, the detection table and the curves on a small
synthetic problem."""

import numpy as np
import pytest

from ecif.experiments.baselines import harmfulness
from ecif.experiments.baselines import cosine_scores, pair_loss_scores, random_scores, tracin_scores
from ecif.experiments.detection import (
    DEFAULT_METHODS,
    METHODS,
    detection_curves,
    detection_scores,
    detection_table,
    self_influence_scores,
)
from ecif.experiments.metrics import precision_recall_curve_at_ks


@pytest.fixture(scope="module")
def scores(tp):
    return detection_scores(tp.engine, tp.val_grad, seed=1)


def test_scores_match_engine(tp, scores):
    assert list(scores) == list(DEFAULT_METHODS)
    IS = tp.engine.influence_scores(tp.val_grad)
    for v in ("positive", "negative", "ecif", "newton"):
        np.testing.assert_allclose(scores[v], harmfulness(IS[v]), rtol=1e-12)
    idx = np.arange(0, tp.obj.n, 13)
    np.testing.assert_allclose(scores["self_ecif"][idx], tp.engine.self_influence(idx, "ecif").numpy(), rtol=1e-10)
    # chunking does not change the result
    np.testing.assert_allclose(self_influence_scores(tp.engine, "positive", chunk=37), scores["self_positive"],
                               rtol=1e-10)
    assert all(s.shape == (tp.obj.n,) and np.isfinite(s).all() for s in scores.values())


def test_registry():
    # one list for every stage: the four influence variants, two self-influence scores, the baselines
    assert DEFAULT_METHODS == tuple(METHODS) == (
        "positive", "negative", "ecif", "newton", "self_ecif", "self_positive", "tracin", "pair_loss", "cosine",
        "random")
    for name, method in METHODS.items():
        assert method.name == name
        assert method.description and "\n" not in method.description


def test_scores_match_baselines_and_subsets(tp, scores):
    np.testing.assert_array_equal(scores["tracin"], tracin_scores(tp.obj, tp.theta, tp.val_grad))
    np.testing.assert_array_equal(scores["pair_loss"], pair_loss_scores(tp.obj, tp.theta))
    np.testing.assert_array_equal(scores["cosine"], cosine_scores(tp.obj, tp.theta))
    np.testing.assert_array_equal(scores["random"], random_scores(tp.obj.n, 1))
    # a subset of methods, in the order asked for, gives the same values (shared solve or not)
    some = detection_scores(tp.engine, tp.val_grad, methods=("newton", "cosine", "ecif"), seed=1)
    assert list(some) == ["newton", "cosine", "ecif"]
    for m, s in some.items():
        np.testing.assert_array_equal(s, scores[m])


def test_curves(tp, scores):
    mask = tp.data.misaligned
    prec, rec = detection_curves(scores, mask)
    assert list(prec.columns) == ["k", *DEFAULT_METHODS] == list(rec.columns)
    np.testing.assert_array_equal(prec["k"], np.arange(1, tp.obj.n + 1))
    curve = precision_recall_curve_at_ks(scores["ecif"], mask, prec["k"])
    np.testing.assert_array_equal(prec["ecif"], curve["precision"])
    np.testing.assert_array_equal(rec["ecif"], curve["recall"])
    p5, _ = detection_curves({"ecif": scores["ecif"]}, mask, ks=[5, 10])
    assert list(p5["k"]) == [5, 10] and list(p5.columns) == ["k", "ecif"]


def test_table_and_what_it_finds(tp, scores):
    mask = tp.data.misaligned
    table = detection_table(scores, mask).set_index("method")
    assert list(table.columns) == ["k", "precision_at_k", "recall_at_k", "auroc", "average_precision"]
    assert (table.k == mask.sum()).all()
    # shuffled captions: ECIF and the loss baselines find them well, random does not
    assert table.loc["ecif", "auroc"] > 0.85
    assert table.loc["pair_loss", "auroc"] > 0.85
    assert table.loc["random", "auroc"] < 0.7
    assert table.loc["ecif", "precision_at_k"] > 3 * mask.mean()


def test_errors(tp):
    with pytest.raises(ValueError, match="unknown method"):
        detection_scores(tp.engine, tp.val_grad, methods=("ecif", "magic"))
    with pytest.raises(ValueError, match="empty"):
        detection_table({}, tp.data.misaligned)
    with pytest.raises(ValueError, match="chunk"):
        self_influence_scores(tp.engine, chunk=0)
