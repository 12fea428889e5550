"""merge_block_lora: the merged open_clip model computes what BlockLoRA computes at theta (block
adapters, projection adapters and logit scale), for the default architecture (ViT + BERT MiniLM)
and a CLIP text transformer; the input model is not changed; a foreign model is refused."""

import numpy as np
import pytest
import torch

from ecif.core.blocks import BlockLoRA, tower_forward
from ecif.data import encoders as E
from ecif.data.embedded import shapes
from ecif.experiments.block_features import image_rows, text_rows, tower_suffix
from ecif.experiments.block_merge import merge_block_lora

from tests.tiny_open_clip import TINY_DEFAULT as TINY, tiny_clip_text_model as _clip_text_model


@pytest.fixture(scope="module")
def data():
    sp = shapes(sizes={"pretrain": 1, "train": 6, "val": 1, "test": 1}, image_size=8)["train"]
    return sp.images, list(sp.captions)


@pytest.fixture(scope="module")
def models():
    return {"vit_minilm": _default_model(), "clip_text": _clip_text_model()}




def _default_model():
    return E.create_default(E.default_config(8, **TINY), seed=0)


def _setup(model, tok, images, texts, n_blocks, targets=("attn", "mlp")):
    x = image_rows(model, images, n_blocks)
    rows, t_txt = text_rows(model, tok, {"t": texts}, n_blocks)
    img = tower_suffix(model, "image", n_blocks, x.shape[1] // (model.visual.transformer.width + 2))
    txt = tower_suffix(model, "text", n_blocks, t_txt)
    param = BlockLoRA(img, txt, float(model.logit_scale.detach()), rank=2, targets=targets, seed=3)
    gen = torch.Generator(device="cpu").manual_seed(7)
    theta = param.theta0 + 0.2 * torch.randn(param.n_params, generator=gen, dtype=torch.float64, device="cpu")
    return param, theta, torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(rows["t"], dtype=torch.float64), t_txt


@pytest.mark.parametrize("arch", ["vit_minilm", "clip_text"])
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_merged_model_equals_block_lora(arch, n_blocks, data, models):
    model, tok = models[arch]
    images, texts = data
    param, theta, x, y, t_txt = _setup(model, tok, images, texts, n_blocks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    u_ref, w_ref = param.encode_images(theta, x), param.encode_texts(theta, y)
    assert float((u_ref - param.encode_images(param.theta0, x)).norm()) > 1e-2 * float(u_ref.norm())  # theta moves them

    # float64: the merged weights give the adapted suffix to rounding (merged into a float64 copy)
    merged64 = merge_block_lora(model.double(), param, theta)
    model.float()
    for tower, z, ref in (("image", x, u_ref), ("text", y, w_ref)):
        t = (param.image if tower == "image" else param.text).tokens
        got = tower_forward(z, tower_suffix(merged64, tower, n_blocks, t))
        assert float((got - ref).abs().max()) < 1e-10 * max(1.0, float(ref.abs().max()))
    assert abs(float(merged64.logit_scale.detach()) - float(theta[-1])) < 1e-12

    # float32 end to end: the merged model's own encoders on the raw inputs
    merged = merge_block_lora(model, param, theta)
    with torch.no_grad():
        u = merged.encode_image(E.image_tensor(images, model.visual.preprocess_cfg)).double()
        w = merged.encode_text(tok(texts)).double()
    np.testing.assert_allclose(u.numpy(), u_ref.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w.numpy(), w_ref.numpy(), rtol=1e-4, atol=1e-5)
    # the input model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_merge_refuses_a_foreign_model(data, models):
    model, tok = models["vit_minilm"]
    images, texts = data
    param, theta, *_ = _setup(model, tok, images, texts, 1, targets=("qv",))
    other, _ = E.create_default(E.default_config(8, **TINY), seed=5)  # another image projection
    with pytest.raises(ValueError, match="projection"):
        merge_block_lora(other, param, theta)
    with pytest.raises(ValueError, match="parameters"):
        merge_block_lora(model, param, theta[:-1])
