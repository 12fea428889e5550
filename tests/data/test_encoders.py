"""Encoders: the offline default trains deterministically and beats chance; missing weights fail fast."""


import numpy as np
import pytest
import torch

from ecif.data import encoders as E
from ecif.data.embedded import digits
from ecif.core.heads import LinearHeads
from ecif.data.features import extract_features
from ecif.experiments.zeroshot import ZeroShotSet

TINY = dict(width=16, layers=1, heads=2, embed_dim=16)


def test_default_training_is_deterministic(tmp_path):
    ds = digits(sizes={"pretrain": 160, "train": 10, "val": 10, "test": 10})
    m1, _, r1 = E.train_default(ds, seed=5, epochs=2, batch_size=64, progress=False, out_dir=tmp_path / "a", **TINY)
    m2, _, r2 = E.train_default(ds, seed=5, epochs=2, batch_size=64, progress=False, out_dir=tmp_path / "b", **TINY)
    # the saved encoder is byte-identical (no wall-clock time in encoder.json): DVC sees no change
    for name in ("encoder.json", "encoder.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "train_seconds" in r1 and "train_seconds" not in E.load_default(tmp_path / "a")[2]
    s1, s2 = E.trained_state(m1), E.trained_state(m2)
    assert s1.keys() == s2.keys() and any(k.startswith("visual.") for k in s1) and "text.proj.weight" in s1
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert r1["loss_per_epoch"] == r2["loss_per_epoch"]
    init, _ = E.create_default(E.default_config(8, **TINY), seed=5)
    assert not torch.equal(init.visual.proj, m1.visual.proj)  # training moved the weights
    assert torch.equal(init.text.transformer.embeddings.word_embeddings.weight,
                       m1.text.transformer.embeddings.word_embeddings.weight)  # MiniLM locked


@pytest.mark.slow
def test_default_encoder_beats_chance_on_digits(tmp_path):
    ds = digits()
    model, tok, rec = E.train_default(ds, seed=0, out_dir=tmp_path, progress=False)
    loaded, tok2, rec2 = E.load_default(tmp_path)
    for k, v in E.trained_state(model).items():
        assert torch.equal(v, E.trained_state(loaded)[k]), k
    feats = extract_features(loaded, tok2, ds, splits=("test",), progress=False)
    heads = LinearHeads(feats["W_img"], feats["W_txt"], float(feats["log_logit_scale"]))  # the encoder's own projections
    acc = ZeroShotSet(feats["x_test"], feats["class_text"], feats["labels_test"]).accuracy(heads, heads.theta0)
    print(f"\nzero-shot accuracy on digits test: {acc:.4f} (chance 0.10); training {rec['train_seconds']} s")
    assert acc > 0.8


def test_missing_pretrained_weights_fail_fast(tmp_path, no_network):
    with pytest.raises(E.WeightsUnavailableError, match="ViT-B-32 / laion2b_s34b_b79k.*local checkpoint"):
        E.load_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path)
    with pytest.raises(E.WeightsUnavailableError, match="does not exist"):
        E.load_pretrained("ViT-B-32", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no pretrained tag"):
        E.load_pretrained("ViT-B-32", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        E.load_pretrained("ViT-Nope", "openai")
    with pytest.raises(E.WeightsUnavailableError, match="no default encoder"):
        E.load_default(tmp_path)


def test_image_tensor_shapes_and_normalisation():
    imgs = np.stack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)])
    x = E.image_tensor(imgs, {"size": 8, "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert x.shape == (2, 3, 8, 8) and x[0].max() == -1 and x[1].min() == 1
    y = E.image_tensor(np.zeros((3, 20, 30, 3), np.uint8), {"size": 16})
    assert y.shape == (3, 3, 16, 16)
