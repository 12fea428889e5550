"""The pure contrastive terms of ``ecif.core.terms`` against autograd and loop references.

Inputs are small random padded batch tensors: a full batch, a padded one, and one with a removed
slot plus padding. Masked entries of ``S`` and ``Sdot`` hold large random values, so any leak of a
masked entry into a kept output shows.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vjp

from ecif.core import terms
from ecif.core.terms import DTYPE, TERMS, VARIANT_TERMS, VARIANTS

KEEP = torch.tensor([[1, 1, 1, 1, 1],
                     [1, 1, 1, 0, 0],
                     [1, 0, 1, 1, 0]], dtype=torch.bool)
N = 11  # the 1/n of the objective: any count >= the kept slots


def _inputs(seed: int = 0):
    """``S``, ``Sdot`` of shape (3, 5, 5) with garbage (large, finite) on masked entries."""
    g = torch.Generator().manual_seed(seed)
    m = terms.masks(KEEP)
    s = 2.0 * torch.randn(3, 5, 5, generator=g, dtype=DTYPE)
    s_dot = torch.randn(3, 5, 5, generator=g, dtype=DTYPE)
    junk = 40.0 * torch.randn(2, 3, 5, 5, generator=g, dtype=DTYPE)
    return torch.where(m.pairs, s, junk[0]), torch.where(m.pairs, s_dot, junk[1]), m


def _kept(m_idx: int) -> list[int]:
    return torch.nonzero(KEEP[m_idx]).flatten().tolist()


def _block(s: torch.Tensor, m_idx: int) -> torch.Tensor:
    """The unpadded similarity matrix of batch ``m_idx`` (kept slots only)."""
    idx = _kept(m_idx)
    return s[m_idx][idx][:, idx]


def _batch_loss(block: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of one unpadded batch, summed: image->text plus text->image."""
    target = torch.arange(block.shape[0])
    return F.cross_entropy(block, target, reduction="sum") + F.cross_entropy(block.T, target, reduction="sum")


def _per_block(s: torch.Tensor, per_pair) -> torch.Tensor:
    """(3, 5) reference: ``per_pair(block, j)`` for every kept slot ``j`` of every batch's
    unpadded block of ``s``."""
    blocks = [_block(s, m_idx) for m_idx in range(3)]
    return _per_slot([torch.stack([torch.as_tensor(per_pair(b, j)) for j in range(b.shape[0])]) for b in blocks])


def _per_slot(values_by_batch) -> torch.Tensor:
    """(3, 5) tensor from per-batch lists of values at the kept slots (0 elsewhere)."""
    out = torch.zeros(KEEP.shape, dtype=DTYPE)
    for m_idx, vals in enumerate(values_by_batch):
        out[m_idx, _kept(m_idx)] = torch.as_tensor(vals, dtype=DTYPE)
    return out


# ---------------------------------------------------------------------- constants
def test_constants():
    assert DTYPE == torch.float64
    assert TERMS == ("pos", "neg", "negexact")
    assert VARIANTS == ("positive", "negative", "ecif", "newton") == tuple(VARIANT_TERMS)
    assert VARIANT_TERMS["ecif"] == ("pos", "neg") and VARIANT_TERMS["newton"] == ("pos", "negexact")
    assert all(set(t) <= set(TERMS) for t in VARIANT_TERMS.values())


def test_masks():
    m = terms.masks(KEEP)
    assert m.pairs.shape == (3, 5, 5) and int(m.pairs[1].sum()) == 9 and int(m.offdiag[1].sum()) == 6
    assert not m.offdiag.diagonal(dim1=1, dim2=2).any()
    sub = m.select(slice(1, 3))
    assert torch.equal(sub.keep, KEEP[1:]) and torch.equal(sub.pairs, m.pairs[1:])


# ---------------------------------------------------------------------- values
def test_softmaxes_are_per_batch_softmaxes():
    s, _, m = _inputs()
    p, q = terms.softmaxes(s, m)
    assert not p[~m.pairs].any() and not q[~m.pairs].any()
    for m_idx in range(3):
        idx = _kept(m_idx)
        block = _block(s, m_idx)
        torch.testing.assert_close(p[m_idx][idx][:, idx], torch.softmax(block, dim=1), rtol=0, atol=1e-15)
        torch.testing.assert_close(q[m_idx][idx][:, idx], torch.softmax(block, dim=0), rtol=0, atol=1e-15)


def test_pos_is_the_own_infonce_terms():
    s, _, m = _inputs()
    pos = terms.pos(s, m)

    def own_terms(block, j):
        return (F.cross_entropy(block[j:j + 1], torch.tensor([j]), reduction="sum")
                + F.cross_entropy(block.T[j:j + 1], torch.tensor([j]), reduction="sum"))

    torch.testing.assert_close(pos, _per_block(s, own_terms), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(pos.sum(), sum(_batch_loss(_block(s, i)) for i in range(3)), rtol=1e-13, atol=0)


def test_pos_plus_negexact_is_exact_removal():
    """Deleting k's row and column from its batch lowers the batch loss by Pos_k + NegExact_k."""
    s, _, m = _inputs()
    t = terms.slot_terms(s, m)

    def drop(block, j):
        rest = [i for i in range(block.shape[0]) if i != j]
        return _batch_loss(block) - _batch_loss(block[rest][:, rest])

    torch.testing.assert_close(t["pos"] + t["negexact"], _per_block(s, drop), rtol=1e-12, atol=1e-12)


def test_neg_is_the_zeta_derivative():
    """Adding log(zeta) to row k and column k of its batch (once on the diagonal): the batch loss
    changes at zeta = 1 with slope +Neg_k (so zeta -> 0, i.e. zeta - 1 = -1, removes k as a
    negative to first order)."""
    s, _, m = _inputs()
    t = terms.slot_terms(s, m)

    def slope(block, j):
        hit = torch.zeros_like(block, dtype=torch.bool)
        hit[j, :] = True
        hit[:, j] = True
        one = torch.ones((), dtype=DTYPE)
        return jvp(lambda z: _batch_loss(block + torch.log(z) * hit), (one,), (one,))[1]

    torch.testing.assert_close(t["neg"], _per_block(s, slope), rtol=1e-13, atol=1e-13)
    assert (t["neg"][KEEP] > 0).all()


# ---------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("seed", [0, 1])
def test_directional_terms_are_jvps_of_the_slot_terms(seed):
    s, s_dot, m = _inputs(seed)
    d = terms.directional_terms(s, s_dot, m)
    _, ref = jvp(lambda z: terms.slot_terms(z, m), (s,), (s_dot,))
    for name in TERMS:
        torch.testing.assert_close(d[name], ref[name], rtol=1e-12, atol=1e-12)
    # r_a, c_b: derivatives of the masked row and column log-sum-exps
    row_lse = lambda z: torch.logsumexp(torch.where(m.pairs, z, torch.full_like(z, -1e30)), dim=2)  # noqa: E731
    col_lse = lambda z: torch.logsumexp(torch.where(m.pairs, z, torch.full_like(z, -1e30)), dim=1)  # noqa: E731
    torch.testing.assert_close(d["r"][KEEP], jvp(row_lse, (s,), (s_dot,))[1][KEEP], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(d["c"][KEEP], jvp(col_lse, (s,), (s_dot,))[1][KEEP], rtol=1e-13, atol=1e-13)


def _data_term(s, m):
    return terms.pos(s, m).sum() / N


def test_hvp_cotangents_are_the_first_and_second_derivatives_in_s():
    """G = dl/dS and Gdot = d/de G(S + e Sdot) for l(S) = (1/n) sum Pos; both 0 off the mask."""
    s, s_dot, m = _inputs()
    g, g_dot = terms.hvp_cotangents(s, s_dot, m, N)
    g_ref, g_dot_ref = jvp(grad(lambda z: _data_term(z, m)), (s,), (s_dot,))
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_dot, g_dot_ref, rtol=1e-12, atol=1e-15)
    assert not g[~m.pairs].any() and not g_dot[~m.pairs].any()


def test_hvp_structure_matches_double_backward():
    """With S = S(theta) a non-linear map, H v = J^T Gdot + grad_theta <J(theta) v, G> (G, Gdot
    held fixed) equals double backward through l(S(theta))."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(15, 4, generator=g, dtype=DTYPE), torch.randn(15, 3, generator=g, dtype=DTYPE)
    index = torch.arange(15).reshape(3, 5)
    m = terms.masks(KEEP)

    def similarity(theta):
        a, b, t = theta[:12].reshape(3, 4), theta[12:21].reshape(3, 3), theta[21]
        u, w = F.normalize(x @ a.T, dim=1), F.normalize(y @ b.T, dim=1)
        return torch.exp(t) * u[index] @ w[index].transpose(1, 2)

    theta = torch.randn(22, generator=g, dtype=DTYPE)
    v = torch.randn(22, generator=g, dtype=DTYPE)
    s, s_dot = jvp(similarity, (theta,), (v,))
    G, G_dot = terms.hvp_cotangents(s, s_dot, m, N)
    _, pullback = vjp(similarity, theta)
    (jt_gdot,) = pullback(G_dot)
    curvature = grad(lambda th: (jvp(similarity, (th,), (v,))[1] * G).sum())(theta)
    hv = jt_gdot + curvature

    th = theta.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(_data_term(similarity(th), m), th, create_graph=True)
    (ref,) = torch.autograd.grad(gr @ v, th)
    torch.testing.assert_close(hv, ref, rtol=1e-11, atol=1e-13)
    # both parts matter: J^T Gdot alone (Gauss-Newton-like) is not H v
    assert not torch.allclose(jt_gdot, ref, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- masking
def test_masked_entries_contribute_nothing():
    s, s_dot, m = _inputs(0)
    s2, s_dot2, _ = _inputs(3)
    # same kept entries, different garbage on the masked ones
    s2, s_dot2 = torch.where(m.pairs, s, s2 + 7.0), torch.where(m.pairs, s_dot, s_dot2 - 3.0)
    a, b = terms.slot_terms(s, m), terms.slot_terms(s2, m)
    da, db = terms.directional_terms(s, s_dot, m), terms.directional_terms(s2, s_dot2, m)
    for name in TERMS:
        assert torch.equal(a[name], b[name]) and not a[name][~KEEP].any()
        assert torch.equal(da[name], db[name]) and not da[name][~KEEP].any()
    for x, x2 in zip(terms.hvp_cotangents(s, s_dot, m, N), terms.hvp_cotangents(s2, s_dot2, m, N)):
        assert torch.equal(x, x2)
    # no gradient flows into a masked entry
    gs = grad(lambda z: sum(terms.slot_terms(z, m)[name].sum() for name in TERMS))(s)
    assert torch.isfinite(gs).all() and not gs[~m.pairs].any() and gs[m.pairs].abs().min() > 0


def test_padding_equals_the_unpadded_batch():
    """Batch 1 (3 kept of 5 slots) gives the same terms as a 3x3 batch with nothing masked."""
    s, s_dot, m = _inputs(2)
    full = terms.masks(torch.ones(1, 3, dtype=torch.bool))
    block, block_dot = _block(s, 1)[None], _block(s_dot, 1)[None]
    padded, alone = terms.slot_terms(s, m), terms.slot_terms(block, full)
    d_padded, d_alone = terms.directional_terms(s, s_dot, m), terms.directional_terms(block, block_dot, full)
    for name in TERMS:
        np.testing.assert_allclose(padded[name][1, :3].numpy(), alone[name][0].numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(d_padded[name][1, :3].numpy(), d_alone[name][0].numpy(), rtol=1e-13, atol=1e-15)
