"""The model switch ``common.encoder``: parsing, the offline errors for each missing asset, one loader."""

from __future__ import annotations

import json

import pytest
import torch

from ecif.data import encoders as E
from ecif.data.encoder_spec import EncoderSpec, WeightsUnavailableError, check_available
from tests.tiny_open_clip import ARCH, MODEL_CFG, save_tiny_resnet_clip


@pytest.mark.parametrize("text, kind, arch, tag, path", [
    ("embedded", "embedded", None, None, None),
    ("ViT-B-32:laion2b_s34b_b79k", "tag", "ViT-B-32", "laion2b_s34b_b79k", None),
    ("ViT-B-32:openai", "tag", "ViT-B-32", "openai", None),
    ("ViT-B-32:/models/open_clip_pytorch_model.bin", "file", "ViT-B-32", None, "/models/open_clip_pytorch_model.bin"),
    ("RN50:weights.pt", "file", "RN50", None, "weights.pt"),
    ("ViT-B-32:~/w/model.safetensors", "file", "ViT-B-32", None, "~/w/model.safetensors"),
    ("/models/my-clip", "folder", None, None, "/models/my-clip"),
    ("./my-clip", "folder", None, None, "./my-clip"),
])
def test_parse_forms(text, kind, arch, tag, path) -> None:
    spec = EncoderSpec.parse(text)
    assert (spec.kind, spec.arch, spec.tag, spec.path, spec.text) == (kind, arch, tag, path, text)
    assert spec.pretrained == (kind != "embedded")
    assert spec.describe()


@pytest.mark.parametrize("text, match", [
    ("ViT-B-32", "not one of the forms"),
    ("ViT-B-32:", "no pretrained tag or checkpoint"),
    ("", "non-empty"),
    (None, "non-empty"),
    ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "not used here"),
])
def test_parse_rejects_malformed_values(text, match) -> None:
    with pytest.raises(ValueError, match=match):
        EncoderSpec.parse(text)


def test_missing_assets_raise_the_documented_error(tmp_path) -> None:
    assert check_available("embedded") is None
    with pytest.raises(WeightsUnavailableError, match=r"checkpoint file .*missing\.bin.* does not exist.*looked from.*"
                                                      r"ViT-B-32:/path/to/open_clip_pytorch_model\.bin"):
        check_available(f"ViT-B-32:{tmp_path}/missing.bin")
    with pytest.raises(WeightsUnavailableError, match="model folder .* does not exist"):
        check_available(str(tmp_path / "nowhere"))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(WeightsUnavailableError, match="has no open_clip_config.json"):
        check_available(str(tmp_path / "no_config"))
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    with pytest.raises(WeightsUnavailableError, match="no weights file"):
        check_available(str(tmp_path / "no_weights"))
    # a tag whose download is not in the (empty) cache: where it looked and the three ways to provide it
    with pytest.raises(WeightsUnavailableError) as err:
        check_available("ViT-B-32:laion2b_s34b_b79k", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    for part in ("ViT-B-32 / laion2b_s34b_b79k", str(tmp_path / "cache"), "create_model_and_transforms('ViT-B-32', "
                 "pretrained='laion2b_s34b_b79k')", "common.encoder: ViT-B-32:/path/to/open_clip_pytorch_model.bin"):
        assert part in msg, part
    with pytest.raises(ValueError, match="no pretrained tag"):
        check_available("ViT-B-32:no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        check_available(f"ViT-Nope:{save_tiny_resnet_clip(tmp_path / 'm')}")


def test_missing_weights_write_nothing(tmp_path, monkeypatch) -> None:
    """The encoder stage's step for a pretrained model checks before it writes: no artifacts/ at all."""
    monkeypatch.chdir(tmp_path)
    for text in (f"ViT-B-32:{tmp_path}/missing.bin", str(tmp_path / "nowhere"), "ViT-B-32:laion2b_s34b_b79k"):
        with pytest.raises(WeightsUnavailableError):
            E.save_pretrained_record(text, tmp_path / "artifacts" / "encoder", cache_dir=tmp_path / "cache")
        assert not (tmp_path / "artifacts").exists(), text
    with pytest.raises(WeightsUnavailableError):
        E.load_encoder(f"ViT-B-32:{tmp_path}/missing.bin", tmp_path / "artifacts" / "encoder")
    assert not (tmp_path / "artifacts").exists()


def test_one_loader_for_a_folder_and_a_checkpoint_file(tmp_path) -> None:
    ckpt = save_tiny_resnet_clip(tmp_path / "tiny")
    record = E.save_pretrained_record(str(tmp_path / "tiny"), tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert saved == record and saved["checkpoint"] == str(ckpt) and saved["trained"] is False
    assert saved["checkpoint_bytes"] == ckpt.stat().st_size and len(saved["checkpoint_sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["encoder.json"]
    model, tok, rec = E.load_encoder(str(tmp_path / "tiny"), tmp_path / "enc")
    assert type(model.visual).__name__ == "ModifiedResNet" and rec == saved
    # the same weights as ARCH:PATH, with the architecture registered in this process
    E.register_config(MODEL_CFG, ARCH)
    model2, _, _ = E.load_encoder(f"{ARCH}:{ckpt}", None)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # the encoder stage ran for another model: refuse rather than mix
    with pytest.raises(ValueError, match="rerun the encoder stage"):
        E.load_encoder("embedded", tmp_path / "enc")


def test_a_tag_is_found_in_the_local_hugging_face_cache(tmp_path) -> None:
    """Offline, ARCH:TAG resolves to the file a previous download left in the cache (no network)."""
    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"stand-in weights")
    found = check_available("ViT-B-32:laion2b_s34b_b79k", cache_dir=tmp_path / "hub")
    assert found == snap / "open_clip_model.safetensors"
    record = E.encoder_record("ViT-B-32:laion2b_s34b_b79k", cache_dir=tmp_path / "hub")
    assert record["kind"] == "tag" and record["arch"] == "ViT-B-32" and record["tag"] == "laion2b_s34b_b79k"
    assert record["checkpoint"] == str(found) and record["checkpoint_bytes"] == len(b"stand-in weights")


def test_downloads_allowed_lets_an_uncached_tag_through(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ECIF_ALLOW_DOWNLOAD", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert check_available("ViT-B-32:laion2b_s34b_b79k", cache_dir=tmp_path / "hub") is None  # fetched at load
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline wins
    with pytest.raises(WeightsUnavailableError):
        check_available("ViT-B-32:laion2b_s34b_b79k", cache_dir=tmp_path / "hub")
