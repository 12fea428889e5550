"""LoRA heads' low-rank batch cosines (docs/math.md §21) against the embed-and-normalise path.

The objective of :class:`LoRAHeads` never forms the embeddings of a batch: it writes the cosine
numerators as the frozen base's batch constant plus rank-2r corrections. Every quantity built on
it (cosines, their derivative along a direction, loss, gradient, Hessian-vector product in both
precisions, directional terms) must equal the generic path that embeds, normalises and multiplies
out at the full embedding width, on an embedding wider than 4r, ragged batches and removed pairs.
"""

import numpy as np
import pytest
import torch
from torch.func import jvp

from ecif.core.batching import BatchingProtocol
from ecif.core.heads import LoRAHeads
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs

N, BATCH, REMOVE = 230, 32, [3, 40, 229]


@pytest.fixture(scope="module")
def problem():
    d = synthetic_pairs(N, n_val=8, d_img=24, d_txt=20, width=40, n_classes=6, latent=8, shuffle_rate=0.2, seed=3)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=3, seed=3)
    gen = torch.Generator().manual_seed(4)
    theta = param.theta0 + 0.2 * torch.randn(param.n_params, generator=gen, dtype=torch.float64)
    v = torch.randn(param.n_params, generator=gen, dtype=torch.float64)
    low = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(N, BATCH, 3), lam=0.3).without(REMOVE)
    # the same parametrization without its own cosines: the objective embeds and normalises
    generic_param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=3, seed=3)
    generic_param.low_rank_cosines = False
    generic = ContrastiveObjective(generic_param, d.x, d.y, BatchingProtocol.from_seed(N, BATCH, 3),
                                   lam=0.3).without(REMOVE)
    return low, generic, theta, v


def _normalised_cosines(param, theta, data, b):
    u, w = param.embed(theta, data)
    u, w = u / u.norm(dim=1, keepdim=True), w / w.norm(dim=1, keepdim=True)
    return u.reshape(-1, b, u.shape[1]) @ w.reshape(-1, b, w.shape[1]).transpose(1, 2)


def test_batch_cosines_and_tangent_equal_normalised_embeddings(problem):
    low, _, theta, v = problem
    b = low.index.shape[1]
    assert low.index.shape[0] * b > N  # padded: the last batch is ragged
    data, const = low._bdata, low._bconst
    c, c_dot = low.param.batch_cosines(theta, data, const, b, v=v)
    ref, ref_dot = jvp(lambda t: _normalised_cosines(low.param, t, data, b), (theta,), (v,))
    assert c.shape == (low.index.shape[0], b, b)
    np.testing.assert_allclose(c.numpy(), ref.numpy(), atol=1e-13, rtol=0)
    np.testing.assert_allclose(c_dot.numpy(), ref_dot.numpy(), atol=1e-12 * float(ref_dot.abs().max()), rtol=0)
    np.testing.assert_allclose(low.param.batch_cosines(theta, data, const, b).numpy(), c.numpy(), atol=0, rtol=0)


def test_objective_on_low_rank_cosines_equals_generic_path(problem):
    low, generic, theta, v = problem
    assert low.param.low_rank_cosines and not generic.param.low_rank_cosines
    assert abs(float(low.loss(theta)) - float(generic.loss(theta))) < 1e-13
    g_low, g_gen = low.gradient(theta), generic.gradient(theta)
    np.testing.assert_allclose(g_low.numpy(), g_gen.numpy(), atol=1e-13 * float(g_gen.abs().max()), rtol=0)
    h_low, h_gen = low.hvp(theta, v), generic.hvp(theta, v)
    scale = float(h_gen.abs().max())
    np.testing.assert_allclose(h_low.numpy(), h_gen.numpy(), atol=1e-12 * scale, rtol=0)
    np.testing.assert_allclose(h_low.numpy(), generic.hvp_autograd(theta, v).numpy(), atol=1e-12 * scale, rtol=0)
    # float32 products: about 1e-7 relative off, far closer than any wrong formula
    err32 = float((low.hvp(theta, v, "float32") - h_gen).abs().max()) / scale
    assert err32 < 1e-5
    d_low, d_gen = low.directional_terms(theta, v), generic.directional_terms(theta, v)
    for name in ("pos", "neg", "negexact"):
        np.testing.assert_allclose(d_low[name].numpy(), d_gen[name].numpy(),
                                   atol=1e-12 * float(d_gen[name].abs().max()), rtol=0)
    assert float(d_low["pos"][REMOVE].abs().max()) == 0.0


def test_batch_constants_are_the_base_numerators(problem):
    low, _, _, _ = problem
    b = low.index.shape[1]
    xb = low._bdata.x_base.reshape(-1, b, low.param.width)
    yb = low._bdata.y_base.reshape(-1, b, low.param.width)
    assert low._bconst.shape == (low.index.shape[0], b, b)
    np.testing.assert_allclose(low._bconst[1].numpy(), (xb[1] @ yb[1].T).numpy(), atol=1e-13, rtol=0)
    # shared with leave-out objectives, not recomputed
    assert low.without([7])._bconst is low._bconst
