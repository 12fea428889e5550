"""The TRAK peer (ecif/experiments/trak_peer.py): its margins are the pair's own InfoNCE terms
(``Pos_k = softplus(-m_row) + softplus(-m_col)``, and their gradients combine to the kit's
``grad Pos_k``); with one checkpoint its scores equal TRAK's closed form
``Q_k phi_k^T (Phi^T Phi + lambda_reg I)^-1 phi_val`` built from the kit's own similarities by
autograd (up to TRAK's positive normalisation); the sign is the kit's; halves keep every batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecif.core.terms import DTYPE
from ecif.experiments import peers, trak_peer
from tests.experiments.test_peers import BATCH, N, lora_problem


def _examples(obj):
    ex = peers.train_examples(obj)
    return peers.HeadsModule(obj.param, lora_problem()[2]), ex


def _slot(ex):
    return ex.weight.argmax(dim=1)


def test_margins_are_the_pairs_infonce_terms() -> None:
    obj, _, theta, _, _ = lora_problem()
    module, ex = _examples(obj)
    m_row, m_col = trak_peer.margins(module, ex.x, ex.y, ex.keep)
    k = torch.arange(N)
    m_row, m_col = m_row[k, _slot(ex)], m_col[k, _slot(ex)]
    pos = torch.nn.functional.softplus(-m_row) + torch.nn.functional.softplus(-m_col)
    kit = obj.pair_terms(theta)["pos"]
    print("max |softplus(-m_row)+softplus(-m_col) - Pos_k|:", float((pos.detach() - kit).abs().max()))
    torch.testing.assert_close(pos.detach(), kit, rtol=1e-12, atol=1e-12)
    # -[(1 - p_row) grad m_row + (1 - p_col) grad m_col] = grad Pos_k, every pair
    p_row, p_col = torch.sigmoid(m_row).detach(), torch.sigmoid(m_col).detach()
    params = dict(module.named_parameters())

    def combo(pr, x, y, keep, w, qr, qc):
        def mod(a, c):
            return torch.func.functional_call(module, pr, (a, c))
        r, c = trak_peer.margins(mod, x[None], y[None], keep[None])
        return -((qr * r[0] + qc * c[0]) * w).sum()

    grads = torch.func.vmap(torch.func.grad(combo), in_dims=(None, 0, 0, 0, 0, 0, 0))(
        params, ex.x, ex.y, ex.keep, ex.weight, 1 - p_row, 1 - p_col)
    flat = torch.cat([grads[name].reshape(N, -1) for name, _ in module.named_parameters()], dim=1).detach()
    kit_g = obj.pair_gradients(theta, ("pos",)).detach()
    print("max |combined margin gradients - grad Pos_k|:", float((flat - kit_g).abs().max()),
          "of max", float(kit_g.abs().max()))
    torch.testing.assert_close(flat, kit_g, rtol=1e-10, atol=1e-12)


def test_the_target_output_is_minus_the_validation_loss() -> None:
    obj, val, theta, _, _ = lora_problem()
    module = peers.HeadsModule(obj.param, theta)
    q = peers.query_example(val)
    out = trak_peer.example_outputs(module, q.x, q.y, q.keep, torch.zeros_like(q.weight), q.weight)
    print("target output", float(out.detach()), "-L_val", -float(val.loss(theta).detach()))
    assert float(out.detach()) == pytest.approx(-float(val.loss(theta).detach()), rel=1e-12)


def test_one_checkpoint_is_the_closed_form_with_the_kits_sign() -> None:
    pytest.importorskip("trak")
    from trak.projectors import BasicProjector, ProjectionType

    obj, val, theta, g_val, positive = lora_problem()
    k = 24
    res = peers.peer_scores("trak", obj, val, theta, proj_dim=k, checkpoints=1, seed=5, batch_size=BATCH)
    assert res.scores.shape == (N,) and np.array_equal(res.scores, res.raw)
    # closed form from the kit's similarities: per-pair gradients of m_row + m_col by autograd
    sim = obj.similarity(theta)  # (M, b, b), differentiable

    def outputs(th):
        s = obj.similarity(th)
        m = obj.masks
        off = torch.where(m.offdiag, s, torch.full_like(s, -1e30))
        d = torch.diagonal(s, dim1=1, dim2=2)
        f = 2 * d - torch.logsumexp(off, dim=2) - torch.logsumexp(off, dim=1)
        return obj._scatter(f)  # (n,)

    assert sim.shape[-1] == BATCH
    g = torch.autograd.functional.jacobian(outputs, theta)  # (n, P)
    s = obj.similarity(theta).detach()
    off = torch.where(obj.masks.offdiag, s, torch.full_like(s, -1e30))
    d = torch.diagonal(s, dim1=1, dim2=2)
    p_row, p_col = torch.sigmoid(d - torch.logsumexp(off, dim=2)), torch.sigmoid(d - torch.logsumexp(off, dim=1))
    q = obj._scatter(1 - (p_row + p_col) / 2)
    p = obj.n_params
    r = BasicProjector(grad_dim=p, proj_dim=k, seed=5, proj_type=ProjectionType.normal, device="cpu",
                       dtype=torch.float32).project(torch.eye(p, dtype=torch.float32), model_id=0).to(DTYPE)
    phi, phi_t = g @ r / p ** 0.5, (-g_val) @ r / p ** 0.5  # target: grad of -L_val
    lam_reg = trak_peer.trak_lambda(N, obj.lam, k, p)
    closed = q * (phi @ torch.linalg.solve(phi.T @ phi + lam_reg * torch.eye(k, dtype=DTYPE), phi_t))
    closed = closed.numpy()
    ratio = res.scores / closed
    print("TRAK / closed form: min", ratio.min(), "max", ratio.max(),
          "corr", np.corrcoef(res.scores, closed)[0, 1], "corr with the kit's positive",
          np.corrcoef(res.scores, positive)[0, 1])
    assert ratio.min() > 0  # same sign everywhere: TRAK's normalisation is positive
    np.testing.assert_allclose(res.scores / np.linalg.norm(res.scores), closed / np.linalg.norm(closed),
                               atol=2e-4)
    assert np.corrcoef(res.scores, positive)[0, 1] > 0.5  # the kit's sign: harmful pairs negative


def test_halves_keep_every_batch_and_bad_settings_are_refused() -> None:
    obj, val, theta, _, _ = lora_problem()
    halves = trak_peer.half_subsets(obj.batching.batch_ids, 4, 0)
    ids = obj.batching.batch_ids
    for h in halves:
        assert set(np.unique(ids[h])) == set(np.unique(ids))  # no batch emptied
        assert abs(len(h) - N / 2) <= len(np.unique(ids))
    assert not np.array_equal(halves[0], halves[1])
    with pytest.raises(ValueError, match="proj_dim and checkpoints"):
        peers.peer_scores("trak", obj, val, theta, proj_dim=0)
