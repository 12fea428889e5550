"""Data without class labels: the one place that handles it (ecif/kit/labels.py)."""

from types import SimpleNamespace

import pytest

from ecif.kit.labels import LabelsRequiredError, has_labels, require_labels, zero_shot


class _Test:
    def accuracy(self, param, theta):
        return 0.5 + theta


def test_zero_shot_with_and_without_labels():
    labelled = SimpleNamespace(test_set=_Test(), param=None)
    assert has_labels(labelled)
    assert zero_shot(labelled, {"base": 0.0, "fitted": 0.25}) == {"base": 0.5, "fitted": 0.75}
    unlabelled = SimpleNamespace(test_set=None, param=None)
    out = zero_shot(unlabelled, {"base": 0.0, "fitted": 0.25})
    assert out["base"] is None and out["fitted"] is None and "no class labels" in out["note"]


def test_require_labels_says_why_and_what_to_do():
    require_labels(SimpleNamespace(test_set=_Test()), "cleaning")
    with pytest.raises(LabelsRequiredError, match="stage 'cleaning' measures zero-shot test accuracy.*label.*dvc repro detect"):
        require_labels(SimpleNamespace(test_set=None), "cleaning")
