"""The EMI study with a block-mode model under test: :func:`response_model` merges the fitted
adapters into the backbone and encodes the raw images and bank captions; its embeddings must be
what ``BlockLoRA`` computes on the block rows of the same inputs (and so its retrievals)."""

import numpy as np
import pytest
import torch

from ecif.core.blocks import BlockLoRA
from ecif.data import encoders as E
from ecif.data.embedded import shapes
from ecif.experiments import emi_study as S
from ecif.experiments.block_features import image_rows, text_rows, tower_suffix

from tests.tiny_open_clip import TINY_DEFAULT


@pytest.fixture(scope="module")
def case():
    model, tok = E.create_default(E.default_config(8, **TINY_DEFAULT), seed=0)
    split = shapes(sizes={"pretrain": 1, "train": 1, "val": 1, "test": 12}, image_size=8)["test"]
    x = image_rows(model, split.images, 1)
    rows, t_txt = text_rows(model, tok, {"bank": list(split.captions)}, 1)
    img = tower_suffix(model, "image", 1, x.shape[1] // (model.visual.transformer.width + 2))
    param = BlockLoRA(img, tower_suffix(model, "text", 1, t_txt), float(model.logit_scale.detach()), rank=1,
                      targets=("qv",), seed=0)
    gen = torch.Generator(device="cpu").manual_seed(5)
    theta = param.theta0 + 0.3 * torch.randn(param.n_params, generator=gen, dtype=torch.float64, device="cpu")
    emb = S.Embedder(model, tok)
    view = S.encode_set(emb, split)
    return param, theta, emb, view, torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(rows["bank"], dtype=torch.float64)


def _unit(z: torch.Tensor) -> np.ndarray:
    z = z.detach().numpy()
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_block_mode_embeddings_are_the_block_lora_ones(case) -> None:
    param, theta, emb, view, x, y = case
    u, w = S.response_model(param, theta, emb)(view)
    u_ref, w_ref = _unit(param.encode_images(theta, x)), _unit(param.encode_texts(theta, y))
    np.testing.assert_allclose(u, u_ref, atol=2e-5)
    np.testing.assert_allclose(w, w_ref, atol=2e-5)
    # theta matters: the base model's embeddings are far from the fitted ones
    u0 = _unit(param.encode_images(param.theta0, x))
    assert float(np.abs(u0 - u_ref).max()) > 1e-2
    # the retrievals are those of the block rows' similarities, wherever the best caption is clear
    sims = u_ref @ w_ref.T
    top2 = np.sort(sims, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(S.respond(param, theta, view, embedder=emb)[clear], np.argmax(sims, axis=1)[clear])

def test_block_mode_needs_the_backbone_and_raw_inputs(case) -> None:
    param, theta, emb, view, *_ = case
    with pytest.raises(ValueError, match="embedder="):
        S.respond(param, theta, view)
    bare = S.SetView(view.x_feat, view.bank_feat, view.z_v, view.z_t, view.z_y, view.clean, view.attributes)
    with pytest.raises(ValueError, match="raw images"):
        S.respond(param, theta, bare, embedder=emb)
