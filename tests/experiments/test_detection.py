"""Detection scores of every method and the detection table on a small synthetic problem."""

import numpy as np
import pytest

from ecif.experiments.baselines import harmfulness
from ecif.experiments.detection import (
    DEFAULT_METHODS,
    detection_scores,
    detection_table,
    self_influence_scores,
)


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
