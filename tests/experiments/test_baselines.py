"""Baseline detection scores: definitions against explicit per-pair computations, signs, errors."""

import numpy as np
import pytest
import torch

from ecif.experiments.baselines import (
    cosine_scores,
    harmfulness,
    pair_loss_scores,
    random_scores,
    tracin_scores,
)
from ecif.experiments.metrics import auroc


def test_tracin_equals_explicit_per_pair_gradient_dot_products(tp):
    idx = np.arange(0, tp.obj.n, 7)
    for variant, terms in [("ecif", ("pos", "neg")), ("positive", ("pos",))]:
        g = tp.obj.pair_gradients(tp.theta, terms, idx)  # (len, P), no 1/n
        explicit = -(g @ tp.val_grad).numpy() / tp.obj.n
        np.testing.assert_allclose(tracin_scores(tp.obj, tp.theta, tp.val_grad, variant)[idx], explicit,
                                   rtol=1e-9, atol=1e-13)


def test_tracin_sign_matches_ecif_with_identity_hessian(tp):
    # ECIF with H = I (a solver that returns its input) gives IS = (1/n) grad T_k^T g_val;
    # tracin is its harmfulness -IS
    from ecif.core.influence import ECIF

    class Identity:
        def solve(self, b):
            return b

    eng = ECIF(tp.obj, tp.theta, solver=Identity())
    IS = eng.influence_scores(tp.val_grad, variants=("ecif",))["ecif"]
    np.testing.assert_allclose(tracin_scores(tp.obj, tp.theta, tp.val_grad), harmfulness(IS), rtol=1e-12)


def test_pair_loss_and_cosine(tp):
    pl = pair_loss_scores(tp.obj, tp.theta)
    np.testing.assert_allclose(pl.sum() / tp.obj.n + 0.5 * tp.obj.lam * float(((tp.theta - tp.obj.theta0) ** 2).sum()),
                               float(tp.obj.loss(tp.theta)), rtol=1e-12)
    cs = cosine_scores(tp.obj, tp.theta)
    u, v = tp.obj.embeddings(tp.theta)
    k = 5
    cos = float(u[k] @ v[k] / (u[k].norm() * v[k].norm()))
    assert cs[k] == pytest.approx(-cos)
    assert cs.shape == pl.shape == (tp.obj.n,) and cs.dtype == np.float64
    assert (np.abs(cs) <= 1 + 1e-12).all()
    # shuffled captions are far from their images: both baselines detect them well here
    assert auroc(pl, tp.data.misaligned) > 0.8
    assert auroc(cs, tp.data.misaligned) > 0.8


def test_random_and_harmfulness():
    a, b = random_scores(50, 3), random_scores(50, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_scores(50, 4))
    assert a.shape == (50,) and ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(harmfulness(torch.tensor([-1.0, 2.0])), [1.0, -2.0])
    with pytest.raises(ValueError):
        random_scores(0, 1)
    with pytest.raises(ValueError, match="1-D"):
        harmfulness(np.zeros((2, 2)))


def test_errors(tp):
    with pytest.raises(ValueError, match="val_gradient"):
        tracin_scores(tp.obj, tp.theta, tp.val_grad[:-1])
    with pytest.raises(ValueError, match="variant"):
        tracin_scores(tp.obj, tp.theta, tp.val_grad, variant="nope")
    with pytest.raises(ValueError, match="theta"):
        pair_loss_scores(tp.obj, tp.theta[:-1])
