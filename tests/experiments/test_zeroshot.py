"""Zero-shot evaluation: logits, accuracy, margins, mispredicted items and item gradients."""

import numpy as np
import pytest
import torch

from ecif.experiments.zeroshot import ZeroShotSet


def test_zero_shot_set(tp, test_set):
    wrong = test_set.mispredicted(tp.param, tp.theta)
    m = test_set.margins(tp.param, tp.theta)
    assert len(wrong) > 0 and (m[wrong] < 0).all() and (np.diff(m[wrong]) >= 0).all()
    assert (test_set.predictions(tp.param, tp.theta)[wrong] != test_set.labels[wrong]).all()
    assert test_set.accuracy(tp.param, tp.theta) == pytest.approx(1 - len(wrong) / len(test_set))
    with pytest.raises(ValueError, match="labels"):
        ZeroShotSet(test_set.x, test_set.class_text, test_set.labels[:-1])


def test_logits_and_margins_by_hand(tp, test_set):
    d = tp.data
    u = np.asarray(d.x_val) @ tp.param.image_projection(tp.theta).numpy().T
    v = np.asarray(d.class_text) @ tp.param.text_projection(tp.theta).numpy().T
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    expected = np.exp(float(tp.param.log_scale(tp.theta))) * u @ v.T
    logits = test_set.logits(tp.param, tp.theta).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-12)
    y = test_set.labels
    other = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits).max(axis=1)
    np.testing.assert_allclose(test_set.margins(tp.param, tp.theta), logits[np.arange(len(y)), y] - other,
                               rtol=1e-12)
    np.testing.assert_array_equal(test_set.predictions(tp.param, tp.theta), logits.argmax(axis=1))
    # numpy float32 or float64 tensors: the same set
    same = ZeroShotSet(torch.as_tensor(np.asarray(d.x_val)), np.asarray(d.class_text), torch.as_tensor(d.labels_val))
    assert same.accuracy(tp.param, tp.theta) == test_set.accuracy(tp.param, tp.theta)
    assert same.x.dtype == torch.float64 and same.labels.dtype == np.int64


def test_subset_and_item_gradients(tp, test_set):
    items = [5, 0, 17]
    sub = test_set.subset(items)
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.labels, test_set.labels[items])
    np.testing.assert_allclose(sub.margins(tp.param, tp.theta), test_set.margins(tp.param, tp.theta)[items],
                               rtol=1e-12)
    g = sub.item_gradients(tp.param, tp.theta)
    assert g.shape == (tp.param.n_params, 3)
    for j, z in enumerate(items):
        th = tp.theta.clone().requires_grad_(True)
        logits = test_set.subset([z]).logits(tp.param, th)
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(test_set.labels[[z]]))
        (ref,) = torch.autograd.grad(loss, th)
        torch.testing.assert_close(g[:, j], ref, rtol=1e-10, atol=1e-12)


def test_errors(tp, test_set):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, "):
        ZeroShotSet(test_set.x, test_set.class_text, np.full(len(test_set), test_set.class_text.shape[0]))
    with pytest.raises(ValueError, match="2 dimensions"):
        ZeroShotSet(test_set.x[0], test_set.class_text, test_set.labels[:1])
    narrow = ZeroShotSet(test_set.x[:, :-1], test_set.class_text, test_set.labels)
    with pytest.raises(ValueError, match="feature widths"):
        narrow.accuracy(tp.param, tp.theta)
