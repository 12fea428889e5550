"""Block-LoRA parametrization (ecif/core/blocks.py): derivatives against autograd's dense Hessian
and finite differences, the removal identity, the all-pairs directional pass against per-pair
gradients, the single-token shortcut, and the reduction to LoRAHeads with no adapted block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.blocks import (BlockLoRA, LayerNormSpec, Linear, SuffixBlock, TowerSuffix, tower_forward,
                              tower_inputs)
from ecif.core.heads import LoRAHeads
from ecif.core.objective import ContrastiveObjective

D = torch.float64


def _lin(g, o, i, bias=True):
    return Linear(torch.randn(o, i, generator=g, dtype=D) / i ** 0.5,
                  0.1 * torch.randn(o, generator=g, dtype=D) if bias else None)


def _ln(g, w):
    return LayerNormSpec(1 + 0.1 * torch.randn(w, generator=g, dtype=D), 0.1 * torch.randn(w, generator=g, dtype=D), 1e-5)


def _block(g, w, layout, act="gelu", causal=False, scale=False):
    lin = {m: _lin(g, w, w) for m in "qkvo"}
    lin.update(fc1=_lin(g, 2 * w, w), fc2=_lin(g, w, 2 * w))
    s = (lambda: 1 + 0.1 * torch.randn(w, generator=g, dtype=D)) if scale else (lambda: None)
    return SuffixBlock(layout, lin, _ln(g, w), _ln(g, w), 2, act, causal, s(), s())


def _rows(g, n, t, w, pooling):
    """Feature rows (n, t (w + 2)) with 'cls' (one-hot at 0), 'mean' (ragged key mask) or 'eot'
    (one-hot at a per-row position, causal) pooling."""
    h = torch.randn(n, t, w, generator=g, dtype=D)
    key = torch.ones(n, t, dtype=D)
    if pooling == "cls":
        pool = torch.zeros(n, t, dtype=D)
        pool[:, 0] = 1
    elif pooling == "mean":
        length = 2 + torch.arange(n) % (t - 1)
        key = (torch.arange(t)[None, :] < length[:, None]).to(D)
        pool = key / key.sum(1, keepdim=True)
    else:
        pos = 1 + torch.arange(n) % (t - 1)
        pool = torch.nn.functional.one_hot(pos, t).to(D)
    return torch.cat([h.reshape(n, -1), key, pool], 1)


def _problem(layouts=("pre_ln", "post_ln"), blocks=1, n=12, targets=("attn", "mlp"), text_pool="mean", seed=0,
             act="gelu", lam=0.1):
    g = torch.Generator().manual_seed(seed)
    t, wi, wt, e = 5, 8, 6, 4
    causal = text_pool == "eot"
    img = TowerSuffix([_block(g, wi, layouts[0], act, scale=True) for _ in range(blocks)], _ln(g, wi),
                      _lin(g, e, wi, bias=False), t)
    txt = TowerSuffix([_block(g, wt, layouts[1], act, causal=causal) for _ in range(blocks)],
                      _ln(g, wt) if layouts[1] == "pre_ln" else None, _lin(g, e, wt, bias=False), t)
    x, y = _rows(g, n, t, wi, "cls"), _rows(g, n, t, wt, text_pool)
    y[n // 2:] = y[: n - n // 2]  # repeated captions: the suffix runs once per distinct row
    param = BlockLoRA(img, txt, 1.0, rank=1, targets=targets, seed=seed)
    obj = ContrastiveObjective(param, x, y, BatchingProtocol.from_seed(n, 4, seed), lam=lam)
    theta = param.theta0 + 0.1 * torch.randn(param.n_params, generator=g, dtype=D)
    return param, obj, theta, g


CASES = [
    dict(),  # ViT-like image tower, BERT-like text tower (the default encoder's layouts)
    dict(layouts=("pre_ln", "pre_ln"), text_pool="eot", act="quick_gelu", targets=("qv",)),  # CLIP text transformer
    dict(blocks=2, targets=("mlp",)),
]


@pytest.mark.parametrize("case", CASES, ids=["vit+bert", "causal+quickgelu+qv", "two-blocks+mlp"])
@pytest.mark.parametrize("structured", [False, True])
def test_hvp_equals_the_dense_autograd_hessian(case, structured):
    param, obj, theta, g = _problem(**case)
    param.structured_hvp = structured  # both product paths: double backward and forward mode
    h = torch.autograd.functional.hessian(obj.loss, theta, vectorize=True)
    for _ in range(2):
        v = torch.randn(param.n_params, generator=g, dtype=D)
        hv = obj.hvp(theta, v)
        assert torch.allclose(hv, h @ v, rtol=1e-9, atol=1e-11 * float(h.abs().max()))


@pytest.mark.parametrize("case", CASES, ids=["vit+bert", "causal+quickgelu+qv", "two-blocks+mlp"])
def test_gradient_matches_central_differences(case):
    param, obj, theta, g = _problem(**case)
    grad = obj.gradient(theta)
    for _ in range(3):
        d = torch.randn(param.n_params, generator=g, dtype=D)
        eps = 1e-6
        fd = (obj.loss(theta + eps * d) - obj.loss(theta - eps * d)) / (2 * eps)
        assert float(grad @ d) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_removal_identity():
    param, obj, theta, _ = _problem()
    terms = obj.pair_terms(theta)
    for k in (0, 5, 11):
        diff = obj.loss(theta) - obj.without([k]).loss(theta)
        assert float(diff) == pytest.approx(float(terms["pos"][k] + terms["negexact"][k]) / obj.n, rel=1e-10)


def test_directional_terms_equal_explicit_per_pair_gradients():
    param, obj, theta, g = _problem(text_pool="eot", layouts=("pre_ln", "pre_ln"))
    h = torch.randn(param.n_params, generator=g, dtype=D)
    d = obj.directional_terms(theta, h)
    for name in ("pos", "neg", "negexact"):
        explicit = obj.pair_gradients(theta, (name,)) @ h
        assert torch.allclose(d[name], explicit, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pooling", ["cls", "eot"])
def test_single_token_shortcut_gives_the_full_computation(pooling):
    param, obj, theta, g = _problem(text_pool="eot", layouts=("pre_ln", "pre_ln"), blocks=2)
    tower = param.image if pooling == "cls" else param.text
    z = obj.data.x if pooling == "cls" else obj.data.y
    inp = tower_inputs(z, tower)
    assert inp.query is not None
    full = tower_inputs(z, tower)
    full.query = None  # every position through the last block, then pooled by the weights
    deltas, proj = param._deltas(theta, "img" if pooling == "cls" else "txt", tower)
    assert torch.allclose(tower_forward(inp, tower, deltas, proj), tower_forward(full, tower, deltas, proj),
                          rtol=1e-12, atol=1e-12)


def test_no_adapted_block_is_lora_heads_on_the_pooled_features():
    g = torch.Generator().manual_seed(3)
    t, wi, wt, e, n = 5, 8, 6, 4, 10
    img = TowerSuffix([], _ln(g, wi), _lin(g, e, wi, bias=False), t)
    txt = TowerSuffix([], None, _lin(g, e, wt, bias=False), t)
    x, y = _rows(g, n, t, wi, "cls"), _rows(g, n, t, wt, "mean")
    blocks = BlockLoRA(img, txt, 0.7, rank=2, seed=4)
    # the pooled features the head mode would see: LN(h)[cls] for images, masked mean for texts
    hx = x[:, : t * wi].reshape(n, t, wi)
    px = img.final_ln(hx)[:, 0]
    hy, pool = y[:, : t * wt].reshape(n, t, wt), y[:, t * wt + t:]
    py = (pool[:, :, None] * hy).sum(1)
    heads = LoRAHeads(img.proj.weight, txt.proj.weight, 0.7, rank=2, seed=4)
    assert blocks.n_params == heads.n_params and torch.equal(blocks.theta0, heads.theta0)
    bp = BatchingProtocol.from_seed(n, 5, 0)
    ob = ContrastiveObjective(blocks, x, y, bp, lam=0.1)
    oh = ContrastiveObjective(heads, px, py, bp, lam=0.1)
    theta = heads.theta0 + 0.1 * torch.randn(heads.n_params, generator=g, dtype=D)
    assert float(ob.loss(theta)) == pytest.approx(float(oh.loss(theta)), rel=1e-12)
    assert torch.allclose(ob.gradient(theta), oh.gradient(theta), rtol=1e-10, atol=1e-13)


def test_layout_and_bad_input():
    param, obj, theta, _ = _problem()
    sizes = param.group_sizes()
    assert sum(sizes.values()) == param.n_params and sizes["log_scale"] == 1
    # image block: 4 attention matrices (8x8) and fc1 (16x8), fc2 (8x16), rank 1
    assert sizes["img.blocks"] == 4 * (8 + 8) + 2 * (16 + 8)
    assert float(param.log_scale(param.theta0)) == 1.0
    assert all(float(param.slice(param.theta0, nm).abs().sum()) == 0 for nm in param.names if nm.endswith(".B"))
    with pytest.raises(ValueError, match=r"block feature rows of shape \(n, 50\).*finetune.mode: blocks"):
        param.encode_images(theta, torch.zeros(4, 49, dtype=D))
    with pytest.raises(ValueError, match="overlap"):
        BlockLoRA(param.image, param.text, 1.0, targets=("attn", "qv"))
    with pytest.raises(ValueError, match="non-empty subset"):
        BlockLoRA(param.image, param.text, 1.0, targets=("ffn",))
    with pytest.raises(NotImplementedError, match="encode_images"):
        param.image_projection(theta)
    assert np.isfinite(float(obj.loss(theta)))
