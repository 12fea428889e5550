"""Block features: the suffix run on the cached prefix activations reproduces open_clip's own
embeddings for the default architecture (ViT + MiniLM) and for a CLIP text transformer; other
towers are refused with the fix; the suffix round-trips through its file."""

import numpy as np
import pytest
import torch

from ecif.core.blocks import BlockLoRA, tower_forward
from ecif.data import encoders as E
from ecif.experiments.block_features import (extract_block_features, image_rows, load_suffix, save_suffix, text_rows,
                                      tower_suffix)
from ecif.data.embedded import digits
from ecif.data.noise import inject

open_clip = E.open_clip_module()

TINY = dict(width=16, layers=2, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def ds():
    return digits(sizes={"pretrain": 20, "train": 24, "val": 12, "test": 12})


@pytest.fixture(scope="module")
def default_model():
    return E.create_default(E.default_config(8, **TINY), seed=0)


def _clip_vit_text(**vision):
    """A tiny open_clip CLIP: ViT image tower, causal text transformer with the BPE tokenizer."""
    from open_clip.model import CLIP

    torch.manual_seed(1)
    model = CLIP(embed_dim=12, quick_gelu=True,
                 vision_cfg={"image_size": 8, "patch_size": 4, "width": 16, "layers": 2, "head_width": 8, **vision},
                 text_cfg={"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2}).eval()
    model.visual.preprocess_cfg = {"size": 8, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)


def _reproduces(model, tok, images, texts, n_blocks):
    x = image_rows(model, images, n_blocks, batch_size=5)
    rows, t_txt = text_rows(model, tok, {"t": texts}, n_blocks, batch_size=4)
    img = tower_suffix(model, "image", n_blocks, x.shape[1] // (img_width(model) + 2))
    txt = tower_suffix(model, "text", n_blocks, t_txt)
    with torch.no_grad():
        ref_u = model.encode_image(E.image_tensor(images, model.visual.preprocess_cfg)).double()
        ref_w = model.encode_text(tok(texts)).double()
        u = tower_forward(torch.as_tensor(x, dtype=torch.float64), img)
        w = tower_forward(torch.as_tensor(rows["t"], dtype=torch.float64), txt)
    np.testing.assert_allclose(u.numpy(), ref_u.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w.numpy(), ref_w.numpy(), rtol=1e-4, atol=1e-5)
    return img, txt, t_txt


def img_width(model):
    return model.visual.transformer.width


@pytest.mark.parametrize("n_blocks", [0, 1, 2])
def test_default_architecture_suffix_reproduces_the_model(default_model, ds, n_blocks):
    model, tok = default_model
    sp = ds["train"]
    img, txt, t_txt = _reproduces(model, tok, sp.images[:9], list(sp.captions[:9]), n_blocks)
    assert [b.layout for b in img.blocks] == ["pre_ln"] * n_blocks
    assert [b.layout for b in txt.blocks] == ["post_ln"] * n_blocks  # MiniLM's BERT layers
    # trimmed to the longest caption: far fewer positions than the 32 of the context
    assert t_txt == max(len(tok([c])[0].nonzero()) for c in sp.captions[:9]) < 32


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_clip_text_transformer_and_average_pooling(n_blocks, ds):
    for vision in ({}, {"pool_type": "avg"}, {"pool_type": "avg", "final_ln_after_pool": True}):
        model, tok = _clip_vit_text(**vision)
        _, txt, _ = _reproduces(model, tok, ds["test"].images[:6], list(ds["test"].captions[:6]), n_blocks)
        assert all(b.causal and b.act == "quick_gelu" for b in txt.blocks)


def test_other_towers_are_refused_with_the_fix(tmp_path):
    from tests.tiny_open_clip import save_tiny_resnet_clip

    save_tiny_resnet_clip(tmp_path)
    model, _ = E.load_folder(tmp_path)
    with pytest.raises(ValueError, match="ModifiedResNet.*finetune.mode: head"):
        tower_suffix(model, "image", 1, 4)
    model, _ = _clip_vit_text()
    with pytest.raises(ValueError, match=r"has 2 blocks; finetune.blocks = 3"):
        tower_suffix(model, "text", 3, 4)


def test_extraction_keys_and_suffix_file(default_model, ds, tmp_path):
    model, tok = default_model
    c = inject(ds["train"], "shuffle", 0.25, seed=0, spec=ds.spec)
    f = extract_block_features(model, tok, ds, 1, corruption=c)
    img, txt = f["suffix"]
    for s in ("pretrain", "train", "val", "test"):
        assert f[f"x_{s}"].shape == (len(ds[s]), img.feature_dim) and f[f"y_{s}"].shape == (len(ds[s]), txt.feature_dim)
    assert f["class_text"].shape == (10, txt.feature_dim) and f["noise_mask"].sum() == 6
    assert not np.array_equal(f["y_train"], f["y_train_clean"])
    assert f["meta"]["blocks"]["n_blocks"] == 1 and f["meta"]["blocks"]["suffix_rel_error"] < 1e-5
    save_suffix(tmp_path / "suffix.pt", img, txt)
    img2, txt2 = load_suffix(tmp_path / "suffix.pt")
    a = BlockLoRA(img, txt, 1.0, seed=2)
    b = BlockLoRA(img2, txt2, 1.0, seed=2)
    x = torch.as_tensor(f["x_val"], dtype=torch.float64)
    y = torch.as_tensor(f["y_val"], dtype=torch.float64)
    assert torch.equal(a.encode_images(a.theta0, x), b.encode_images(b.theta0, x))
    assert torch.equal(a.encode_texts(a.theta0, y), b.encode_texts(b.theta0, y))
    with pytest.raises(FileNotFoundError, match="finetune.mode: blocks"):
        load_suffix(tmp_path / "none.pt")
