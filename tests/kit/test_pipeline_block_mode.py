"""Smoke run of the core stages in block mode (finetune.mode: blocks, issue 11).

The embedded encoder (briefly trained) with LoRA inside the last block of both towers: the
finetune stage extracts block features and the suffix, fits and estimates the curvature by
Lanczos (no dense Hessian is saved); the loo stage scores every pair by CG and retrains.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.kit.conftest import run_pipeline

pytest.importorskip("papermill")

STAGES = ["check_params", "inject", "encoder", "finetune", "loo"]


@pytest.fixture(scope="module")
def block_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("block_mode")
    overrides = {
        "noise": {"n_gallery": 4},
        "encoder": {"epochs": 4},
        "finetune": {"mode": "blocks", "blocks": 1, "targets": ["qv"], "lam": 0.3, "n_train": 60, "batch_size": 32},
        "loo": {"n_pairs": 4, "n_misaligned": 2},
        # check_params refuses a block-mode cleaning.lam or ablation.lams below 0.3
        "cleaning": {"lam": 0.3},
        "ablation": {"lams": [0.3, 1.0]},
    }
    return run_pipeline(base / "project", overrides, stages=STAGES)


@pytest.mark.slow
def test_block_mode_fit_curvature_and_loo(block_run) -> None:
    root = block_run
    assert (root / "artifacts" / "features" / "suffix.pt").is_file()
    meta = json.loads((root / "artifacts" / "features" / "features.json").read_text())
    assert meta["mode"] == "blocks" and meta["blocks"]["n_blocks"] == 1 and meta["blocks"]["suffix_rel_error"] < 1e-5
    fit = json.loads((root / "metrics" / "finetune.json").read_text())
    assert fit["fit"]["converged"] is True and fit["fit"]["grad_norm"] <= 1e-8
    assert fit["fit"]["n_params"] > 2000  # q, v adapters of a 384-wide MiniLM block alone: 1536
    assert fit["hessian"]["min_eigenvalue"] > 0
    assert not (root / "artifacts" / "finetune" / "hessian.npy").exists()  # CG, no dense Hessian
    config = json.loads((root / "artifacts" / "finetune" / "fit.json").read_text())["config"]
    assert config["mode"] == "blocks" and config["targets"] == ["qv"] and config["blocks"] == 1
    loo = json.loads((root / "metrics" / "loo.json").read_text())["loo"]
    assert loo["n_pairs"] == 4 and loo["refit_all_converged"] is True
    for variant in ("positive", "negative", "ecif", "newton"):
        assert math.isfinite(loo[variant]["pearson"]), variant
