"""Features: pre-projection features times W reproduce open_clip's embeddings; cache round trip."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ecif.data import encoders as E
from ecif.data.embedded import digits
from ecif.data.features import (append_bias_feature, extract_features, image_features, load_features,
                                projection_matrix, save_features, text_features, without_projection)
from ecif.data.noise import inject

open_clip = E.open_clip_module()  # open_clip with the offline environment set first

TINY = dict(width=16, layers=1, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def tiny():
    return E.create_default(E.default_config(8, **TINY), seed=0)


@pytest.fixture(scope="module")
def ds():
    return digits(sizes={"pretrain": 20, "train": 30, "val": 12, "test": 12})


def _check_reproduces(model, tok, images, texts, atol=1e-5):
    x = image_features(model, images, batch_size=7, progress=False)
    y = text_features(model, tok, texts, batch_size=3, progress=False)
    with torch.no_grad():
        ref_img = model.encode_image(E.image_tensor(images, model.visual.preprocess_cfg)).numpy()
        ref_txt = model.encode_text(tok(texts)).numpy()
    np.testing.assert_allclose(x @ projection_matrix(model, "image").T, ref_img, atol=atol, rtol=1e-4)
    np.testing.assert_allclose(y @ projection_matrix(model, "text").T, ref_txt, atol=atol, rtol=1e-4)
    return x, y


def test_default_model_projection_is_exact(tiny, ds):
    model, tok = tiny
    x, y = _check_reproduces(model, tok, ds["test"].images, ds["test"].captions)
    assert x.shape == (12, 16) and y.shape == (12, 384)  # ViT width, MiniLM width
    assert model.visual.proj is not None and isinstance(model.text.proj, nn.Linear)  # restored


def test_linear_projection_with_bias_gets_constant_feature(ds):
    model, tok = E.create_default(E.default_config(8, **TINY), seed=1)
    model.text.proj = nn.Linear(384, 16, bias=True)
    _, y = _check_reproduces(model, tok, ds["test"].images[:3], ds["test"].captions[:3])
    assert y.shape[1] == 385 and np.all(y[:, -1] == 1)


def test_builtin_text_transformer_clip(ds):
    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 8, "patch_size": 4, "width": 16, "layers": 1, "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    name = E.register_config(cfg, "ecif-test-tiny-clip")
    model = open_clip.create_model(name).eval()
    _check_reproduces(model, open_clip.get_tokenizer(name), ds["test"].images[:4], ds["test"].captions[:4])


def test_extract_save_load(tiny, ds, tmp_path):
    model, tok = tiny
    noise = inject(ds["train"], "label_flip", 0.2, seed=0)
    feats = extract_features(model, tok, ds, noise, progress=False)
    save_features(tmp_path, feats)
    back = load_features(tmp_path)
    for s in ("pretrain", "train", "val", "test"):
        n = len(ds[s])
        assert back[f"x_{s}"].shape == (n, 16) and back[f"y_{s}"].shape == (n, 384)
        assert back[f"x_{s}"].dtype == np.float32 and back[f"labels_{s}"].shape == (n,)
    assert back["class_text"].shape == (10, 384)
    assert back["W_img"].shape == (16, 16) and back["W_txt"].shape == (16, 384)
    assert back["log_logit_scale"].shape == () and np.isclose(back["log_logit_scale"], np.log(1 / 0.07), atol=1e-5)
    np.testing.assert_array_equal(back["noise_mask"], noise.mask)
    assert back["noise_mask"].sum() == 6
    changed = np.any(back["y_train"] != back["y_train_clean"], axis=1)
    np.testing.assert_array_equal(changed, noise.mask)
    assert back["meta"]["captions"]["train"] == noise.captions


def test_without_projection_yields_bias_and_restores(ds):
    """Inside: the text tower returns (n, 384) pre-projection features and the Linear's bias is
    reported; after (also after an error) the projection is back; a bad tower is a ValueError."""
    model, tok = E.create_default(E.default_config(8, **TINY), seed=2)
    linear = nn.Linear(384, 16, bias=True)
    model.text.proj = linear
    captions = ds["test"].captions[:2]
    with torch.no_grad(), without_projection(model, "text") as bias:
        y = model.encode_text(tok(captions))
        assert isinstance(model.text.proj, nn.Identity)
    assert bias is True and y.shape == (2, 384) and model.text.proj is linear
    with torch.no_grad():
        ref = model.encode_text(tok(captions))
    W = torch.as_tensor(projection_matrix(model, "text"))
    torch.testing.assert_close(append_bias_feature(y, bias) @ W.T, ref, atol=1e-5, rtol=1e-4)
    proj = model.visual.proj
    with pytest.raises(RuntimeError, match="boom"), without_projection(model, "image") as bias:
        assert bias is False and model.visual.proj is None
        raise RuntimeError("boom")
    assert model.visual.proj is proj
    with pytest.raises(ValueError, match="tower must be one of"), without_projection(model, "audio"):
        pass


def test_append_bias_feature_shape_and_dtype():
    x = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    assert append_bias_feature(x, False) is x
    out = append_bias_feature(x, True)
    assert out.shape == (3, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([[0.0, 1, 1], [2, 3, 1], [4, 5, 1]], dtype=torch.float64))
