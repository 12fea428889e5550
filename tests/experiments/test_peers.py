"""The peers (ecif/experiments/peers.py) compute what their docstrings claim, in the kit's sign
and scale: dattri's exact and CG influence = the kit's ``positive`` variant, kronfluence's
identity strategy = ``(1/n) grad L_val . grad Pos_k`` (over the LoRA factors alone when the
logit scale is not tracked); the stage's peer names are the module's; bad inputs are
refused with the fix."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.heads import LinearHeads, LoRAHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments import peers

N, N_VAL, BATCH = 60, 40, 16  # batches of 16 with a short last one: padding is exercised


@lru_cache(maxsize=1)
def lora_problem():
    d = synthetic_pairs(N, n_val=N_VAL, d_img=6, d_txt=5, width=4, shuffle_rate=0.2, seed=0)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=1, seed=0)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(N, BATCH, 0), lam=0.2)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(N_VAL, BATCH, 1))
    res = fit(obj, gtol=1e-10)
    assert res.converged, res.summary()
    g_val = validation_gradient(val, res.theta)
    positive = ECIF(obj, res.theta, solver="dense").influence_scores(g_val, ("positive",))["positive"].numpy()
    return obj, val, res.theta, g_val, positive


def test_module_and_examples_reproduce_the_kits_terms() -> None:
    obj, val, theta, _, _ = lora_problem()
    state = torch.random.get_rng_state()
    module = peers.HeadsModule(obj.param, theta)
    assert torch.equal(torch.random.get_rng_state(), state)  # no draw from the global generator
    assert torch.equal(module.theta(), theta)  # registration order = the kit's theta layout
    ex = peers.train_examples(obj)
    assert len(ex) == N and ex.x.shape[1] == BATCH and not bool(ex.keep.all())  # the short batch is padded
    losses = peers.example_losses(module, ex.x, ex.y, ex.keep, ex.weight).detach()
    np.testing.assert_allclose(losses.numpy(), obj.pair_terms(theta)["pos"].numpy(), rtol=1e-12, atol=1e-12)
    q = peers.query_example(val)
    assert float(peers.example_losses(module, q.x, q.y, q.keep, q.weight)) == pytest.approx(float(val.loss(theta)),
                                                                                            rel=1e-12)


@pytest.mark.parametrize("name", ["dattri_explicit", "dattri_cg"])
def test_dattri_is_the_kits_positive_variant(name: str) -> None:
    pytest.importorskip("dattri")
    obj, val, theta, _, positive = lora_problem()
    res = peers.peer_scores(name, obj, val, theta)
    assert res.scores.shape == (N,) and res.seconds > 0
    np.testing.assert_allclose(res.raw / N, res.scores)
    # same sign and scale as IS(k) = (1/n) grad Pos_k^T (H + 0) ^-1 grad L_val (H includes lam I)
    np.testing.assert_allclose(res.scores, positive, rtol=1e-8, atol=1e-10 * np.abs(positive).max())


@pytest.mark.parametrize("track_logit_scale", [True, False])
def test_kronfluence_identity_is_the_gradient_dot_product(track_logit_scale: bool) -> None:
    pytest.importorskip("kronfluence")
    obj, val, theta, g_val, _ = lora_problem()
    res = peers.peer_scores("kronfluence_identity", obj, val, theta, batch_size=BATCH,
                            track_logit_scale=track_logit_scale)
    per_pair = obj.pair_gradients(theta, ("pos",)).detach()
    g = g_val.clone()
    if not track_logit_scale:
        g[-1] = 0.0  # the LoRA factors only
    np.testing.assert_allclose(res.scores, (per_pair @ g).numpy() / N, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["kronfluence_ekfac", "kronfluence_kfac"])
def test_kronfluence_curvature_strategies_track_the_positive_variant(name: str) -> None:
    pytest.importorskip("kronfluence")
    obj, val, theta, _, positive = lora_problem()
    a = peers.peer_scores(name, obj, val, theta, batch_size=BATCH, seed=3)
    b = peers.peer_scores(name, obj, val, theta, batch_size=BATCH, seed=3)
    np.testing.assert_array_equal(a.scores, b.scores)  # seeded Fisher samples: reproducible
    assert np.isfinite(a.scores).all()
    assert np.corrcoef(a.scores, positive)[0, 1] > 0.5  # an approximation of the same quantity, same sign


def test_bad_inputs_are_refused_with_the_fix(monkeypatch) -> None:
    obj, val, theta, _, _ = lora_problem()
    with pytest.raises(ValueError, match="unknown peer"):
        peers.peer_scores("captum", obj, val, theta)
    with pytest.raises(ValueError, match="lam=0"):
        peers.peer_scores("dattri_cg", obj, val.with_lam(0.1), theta)
    with pytest.raises(ValueError, match="removed pairs"):
        peers.peer_scores("dattri_cg", obj.without([0]), val, theta)
    with pytest.raises(ValueError, match="damping"):
        peers.peer_scores("dattri_cg", obj, val, theta, damping=-1.0)
    with pytest.raises(ValueError, match="theta must have shape"):
        peers.peer_scores("dattri_cg", obj, val, theta[:-1])
    lin = LinearHeads(np.eye(4, 6), np.eye(4, 5), 1.0)
    with pytest.raises(TypeError, match="LoRAHeads"):
        peers.HeadsModule(lin, lin.theta0)
    assert peers.unsupported(obj.param) is None  # the head-mode LoRA heads: the peers run
    assert "finetune.mode: head" in peers.unsupported(lin)  # any other model: why not, and the fix
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    assert not peers.available("kronfluence_ekfac")
    with pytest.raises(peers.PeerUnavailable, match=r"pip install -e '\.\[peers\]'"):
        peers.peer_scores("kronfluence_ekfac", obj, val, theta)


def test_the_params_schema_names_the_modules_peers() -> None:
    from ecif.kit.params import PEER_NAMES

    assert PEER_NAMES == peers.PEERS
