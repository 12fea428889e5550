"""The objective and its per-pair terms against independent brute-force references."""

import numpy as np
import pytest
import torch
from torch.func import grad, jacfwd

from core_problems import random_theta, reference_loss, tiny_objective

from ecif.core.batching import BatchingProtocol
from ecif.core.heads import LinearHeads
from ecif.core.objective import ContrastiveObjective

SETUPS = [("linear", None), ("linear", 5), ("lora", None), ("lora", 5)]


@pytest.mark.parametrize("kind, batch_size", SETUPS)
def test_loss_matches_loop_reference(kind, batch_size):
    obj = tiny_objective(kind, batch_size=batch_size)
    th = random_theta(obj)
    assert torch.allclose(obj.loss(th), reference_loss(obj, th), atol=1e-12)
    assert torch.allclose(obj.without([1, 4]).loss(th), reference_loss(obj, th, remove=[1, 4]), atol=1e-12)


@pytest.mark.parametrize("kind, batch_size", SETUPS)
def test_exact_removal_gradient(kind, batch_size):
    """grad L - grad L_{-{k}} (rows/columns literally deleted) = (1/n) grad[Pos_k + NegExact_k]."""
    obj = tiny_objective(kind, batch_size=batch_size)
    th = random_theta(obj)
    g_full = grad(lambda t: reference_loss(obj, t))(th)
    terms = obj.pair_gradients(th, ("pos", "negexact")) / obj.n
    for k in range(obj.n):
        g_minus = grad(lambda t: reference_loss(obj, t, remove=[k]))(th)
        np.testing.assert_allclose((g_full - g_minus).numpy(), terms[k].numpy(), atol=1e-8, rtol=0)
    # and the loss values themselves
    t = obj.pair_terms(th)
    for k in (0, 5):
        diff = reference_loss(obj, th) - reference_loss(obj, th, remove=[k])
        # log(1 - P) loses relative precision where P is close to 1: compare relatively
        assert abs(float(diff) - float(t["pos"][k] + t["negexact"][k]) / obj.n) < 1e-10 * abs(float(diff))


@pytest.mark.parametrize("kind, batch_size", SETUPS)
def test_negative_role_is_zeta_derivative(kind, batch_size):
    """(1/n) grad Neg_k = d/dzeta grad L_zeta at zeta = 1 (log zeta added to row/column k)."""
    obj = tiny_objective(kind, batch_size=batch_size)
    th = random_theta(obj)
    g_neg = obj.pair_gradients(th, ("neg",)) / obj.n
    for k in (0, 3, 7):
        def grad_at(zeta):
            return grad(lambda t: reference_loss(obj, t, log_zeta=torch.log(zeta), zeta_pair=k))(th)

        mixed = jacfwd(grad_at)(torch.tensor(1.0, dtype=torch.float64))
        np.testing.assert_allclose(mixed.numpy(), g_neg[k].numpy(), atol=1e-10, rtol=0)
        # the value of Neg_k is the zeta-derivative of the loss
        dl = jacfwd(lambda z: reference_loss(obj, th, log_zeta=torch.log(z), zeta_pair=k))(
            torch.tensor(1.0, dtype=torch.float64))
        assert abs(float(dl) - float(obj.pair_terms(th)["neg"][k]) / obj.n) < 1e-12


@pytest.mark.parametrize("kind, batch_size", SETUPS)
def test_directional_terms_equal_explicit_dot_products(kind, batch_size):
    obj = tiny_objective(kind, batch_size=batch_size)
    th = random_theta(obj)
    h = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    d = obj.directional_terms(th, h)
    for name in ("pos", "neg", "negexact"):
        explicit = obj.pair_gradients(th, (name,)) @ h
        np.testing.assert_allclose(d[name].numpy(), explicit.numpy(), atol=1e-10, rtol=1e-9)


def test_directional_terms_zero_for_removed_pairs():
    obj = tiny_objective("linear", batch_size=5).without([2, 3])
    th = random_theta(obj)
    d = obj.directional_terms(th, torch.ones(obj.n_params, dtype=torch.float64))
    assert float(d["pos"][2]) == 0.0 and float(d["neg"][3]) == 0.0


@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_hvp_and_hessian_match_autograd(kind):
    obj = tiny_objective(kind, batch_size=5)
    th = random_theta(obj)
    ref = torch.autograd.functional.hessian(lambda t: reference_loss(obj, t), th)
    np.testing.assert_allclose(obj.hessian(th).numpy(), ref.numpy(), atol=1e-10)
    v = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(obj.hvp(th, v).numpy(), (ref @ v).numpy(), atol=1e-10)


@pytest.mark.parametrize("kind, batch_size", SETUPS + [("lora", 3)])
@pytest.mark.parametrize("remove", [None, [1, 4]])
def test_structured_hvp_matches_autograd_hessian(kind, batch_size, remove):
    """The closed-form HVP equals the autograd Hessian of the brute-force loop loss, for full,
    several and ragged (padded) batches, with and without removed pairs."""
    obj = tiny_objective(kind, batch_size=batch_size)
    if remove is not None:
        obj = obj.without(remove)
    th = random_theta(obj)
    ref = torch.autograd.functional.hessian(lambda t: reference_loss(obj, t, remove=remove or ()), th)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(obj.n_params, generator=gen, dtype=torch.float64)
        scale = float((ref @ v).abs().max())
        np.testing.assert_allclose(obj.hvp(th, v).numpy(), (ref @ v).numpy(), atol=1e-12 * scale, rtol=0)
        np.testing.assert_allclose(obj.hvp_autograd(th, v).numpy(), (ref @ v).numpy(), atol=1e-12 * scale, rtol=0)


def _param():
    return LinearHeads(np.eye(3), np.eye(3), 1.0)


def test_input_errors():
    p = _param()
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match="same number of pairs"):
        ContrastiveObjective(p, x, x[:5])
    with pytest.raises(ValueError, match="do not match"):
        ContrastiveObjective(p, x[:, :2], x)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf in 1 row"):
        ContrastiveObjective(p, bad, x)
    with pytest.raises(TypeError, match="numeric"):
        ContrastiveObjective(p, x.astype(str), x)
    with pytest.raises(ValueError, match="covers 5 pairs"):
        ContrastiveObjective(p, x, x, BatchingProtocol.from_seed(5, None, 0))
    with pytest.raises(ValueError, match="lam"):
        ContrastiveObjective(p, x, x, lam=-1.0)


def test_removal_errors():
    x = np.random.default_rng(0).normal(size=(6, 3))
    obj = ContrastiveObjective(_param(), x, x, BatchingProtocol(np.array([0, 0, 0, 1, 1, 1])))
    with pytest.raises(ValueError, match="empty"):
        obj.without([])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        obj.without([6])
    with pytest.raises(ValueError, match="empties batch"):
        obj.without([3, 4, 5])
    with pytest.raises(ValueError, match="shape"):
        obj.without(np.ones(5, dtype=bool))
    assert obj.without(np.array([True, False, False, False, False, False])).removed.tolist() == [0]


@pytest.mark.parametrize("kind, batch_size", [("linear", 3), ("lora", 3), ("lora", 5)])
def test_streamed_chunks_match_references(kind, batch_size, monkeypatch):
    """With chunks of two batches (the last one ragged), the streamed loss, gradient, HVP and
    directional terms equal the brute-force references: the chunking only reorders sums."""
    monkeypatch.setattr(ContrastiveObjective, "CHUNK_ENTRIES", 2 * batch_size ** 2)
    obj = tiny_objective(kind, batch_size=batch_size).without([1, 4])
    assert len(obj._chunks()) >= 2
    th = random_theta(obj)

    def ref(t):
        return reference_loss(obj, t, remove=[1, 4])

    value, g = obj.loss_and_gradient(th)
    assert abs(float(value) - float(ref(th))) < 1e-12
    np.testing.assert_allclose(g.numpy(), grad(ref)(th).numpy(), atol=1e-11, rtol=0)
    np.testing.assert_allclose(grad(obj.loss)(th).numpy(), g.numpy(), atol=1e-12, rtol=0)
    hess = torch.autograd.functional.hessian(ref, th)
    v = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    scale = float((hess @ v).abs().max())
    np.testing.assert_allclose(obj.hvp(th, v).numpy(), (hess @ v).numpy(), atol=1e-12 * scale, rtol=0)
    d = obj.directional_terms(th, v)
    for name in ("pos", "neg", "negexact"):
        np.testing.assert_allclose(d[name].numpy(), (obj.pair_gradients(th, (name,)) @ v).numpy(),
                                   atol=1e-10, rtol=1e-9)
