"""Smoke run of the core stages on an open_clip model of another architecture (issue 10, test a).

The test saves a tiny randomly initialised open_clip ``CLIP`` with a ``ModifiedResNet`` image
tower and open_clip's own text transformer (the default is a ViT with the MiniLM text tower) as a
model folder (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``), sets
``common.encoder`` to it, and runs ``check_params, inject, encoder, finetune, loo, detect``
through their ``dvc.yaml`` commands. The encoder stage must train nothing; every later stage
runs unchanged on the new features.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.kit.conftest import run_pipeline
from tests.tiny_open_clip import save_tiny_resnet_clip

pytest.importorskip("papermill")

STAGES = ["check_params", "inject", "encoder", "finetune", "loo", "detect"]


@pytest.fixture(scope="module")
def model_switch_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("model_switch")
    ckpt = save_tiny_resnet_clip(base / "tiny-resnet-clip")
    overrides = {
        "common": {"encoder": str(ckpt.parent), "device": "cpu"},
        "noise": {"n_gallery": 4},
        "finetune": {"n_train": 80, "batch_size": 32, "centre": True},  # a pretrained model: centred features
        "loo": {"n_pairs": 4, "n_misaligned": 2},
    }
    return run_pipeline(base / "project", overrides, stages=STAGES), ckpt


@pytest.mark.slow
def test_encoder_stage_records_the_checkpoint_and_trains_nothing(model_switch_run) -> None:
    root, ckpt = model_switch_run
    assert sorted(p.name for p in (root / "artifacts" / "encoder").iterdir()) == ["encoder.json"]
    record = json.loads((root / "artifacts" / "encoder" / "encoder.json").read_text())
    assert record["encoder"] == str(ckpt.parent) and record["kind"] == "folder"
    assert record["checkpoint"] == str(ckpt) and record["checkpoint_bytes"] == ckpt.stat().st_size
    assert record["trained"] is False and record["training"] is None and "loss_per_epoch" not in record
    assert record["model_cfg"]["vision_cfg"]["layers"] == [1, 1, 1, 1]  # the ResNet tower, not the default ViT
    features = json.loads((root / "artifacts" / "features" / "features.json").read_text())
    assert features["projection"] == {"image": "identity", "text": "linear"}  # attention pooling: W_img = I


@pytest.mark.slow
def test_fit_and_influence_metrics(model_switch_run) -> None:
    root, _ = model_switch_run
    fit = json.loads((root / "metrics" / "finetune.json").read_text())
    assert fit["fit"]["converged"] is True and fit["fit"]["grad_norm"] <= 1e-8
    assert fit["fit"]["n_train"] == 80 and 0 < fit["fit"]["n_misaligned"] < 80
    assert fit["hessian"]["min_eigenvalue"] > 0
    config = json.loads((root / "artifacts" / "finetune" / "fit.json").read_text())["config"]
    assert config["centre"] is True and config["centre_split"] == "pretrain"  # finetune.centre reached the fit
    loo = json.loads((root / "metrics" / "loo.json").read_text())["loo"]
    assert loo["n_pairs"] == 4 and loo["refit_all_converged"] is True
    for variant in ("positive", "negative", "ecif", "newton"):
        for stat in ("pearson", "spearman"):
            assert math.isfinite(loo[variant][stat]), (variant, stat)
    detect = json.loads((root / "metrics" / "detect.json").read_text())
    assert detect["detect_k"] == fit["fit"]["n_misaligned"]
