"""Smoke run of the core stages in block mode (finetune.mode: blocks, issue 11).

The embedded encoder (briefly trained) with LoRA inside the last block of both towers: the
finetune stage extracts block features and the suffix, fits and estimates the curvature by
Lanczos (no dense Hessian is saved); the loo stage scores every pair by CG and retrains; the
peers stage writes the kit's rows only; the traceback stage traces one mispredicted item by CG
(the shift norms of RIS once for the stage) and retrains without its culprits; the summary stage
reads the block-mode metrics of these stages. The summary's other inputs (ablation, detection,
cleaning, EMI: many minutes in block mode) are the repository's own metrics files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kit.conftest import ROOT, run_pipeline

pytest.importorskip("papermill")

STAGES = ["check_params", "inject", "encoder", "finetune", "loo", "peers", "traceback"]
#: The summary's inputs from stages this smoke run does not run in block mode (copied from the repository).
BORROWED = ("ablation", "detection_summary", "cleaning", "emi")


def _run_stage(root: Path, name: str) -> None:
    """Run one plain stage's command of ``dvc.yaml`` in the project copy ``root``."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(shlex.split(cmd), cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"stage {name} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def block_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("block_mode")
    overrides = {
        "noise": {"n_gallery": 4},
        "encoder": {"epochs": 4},
        "finetune": {"mode": "blocks", "blocks": 1, "targets": ["qv"], "lam": 0.3, "n_train": 40, "batch_size": 20},
        "loo": {"n_pairs": 5, "n_misaligned": 2},  # peers correlates the 3 clean pairs too
        "traceback": {"n_items": 1, "ks": [2], "n_random": 1, "n_gallery": 1, "top": 2},
        # check_params refuses a block-mode cleaning.lam or ablation.lams below 0.3
        "cleaning": {"lam": 0.3},
        "ablation": {"lams": [0.3, 1.0]},
    }
    root = run_pipeline(base / "project", overrides, stages=STAGES)
    for name in BORROWED:
        shutil.copy(ROOT / "metrics" / f"{name}.json", root / "metrics" / f"{name}.json")
    _run_stage(root, "summary")
    return root


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
    assert loo["n_pairs"] == 5 and loo["refit_all_converged"] is True
    for variant in ("positive", "negative", "ecif", "newton"):
        assert math.isfinite(loo[variant]["pearson"]), variant


@pytest.mark.slow
def test_block_mode_peers_traceback_and_summary(block_run) -> None:
    root = block_run
    assert json.loads((root / "metrics" / "peers.json").read_text())["peers"] == {}  # no library hooks the blocks
    tb = json.loads((root / "metrics" / "traceback.json").read_text())
    assert tb["traceback_items"] == 1 and tb["test_mispredicted"] >= 1
    assert set(tb["traceback"]) == {"ris_k2", "is_k2", "random_k2"}
    for row in tb["traceback"].values():
        assert 0.0 <= row["fix_rate"] <= row["improve_rate"] <= 1.0  # fixed (margin now > 0) implies improved
        assert math.isfinite(row["margin_gain"]) and 0.0 <= row["misaligned_removed"] <= 2.0
    # removing the traced culprits moves the item's margin up (the first-order prediction's sign)
    assert tb["traceback"]["is_k2"]["margin_gain"] > 0 and tb["traceback"]["ris_k2"]["margin_gain"] > 0
    assert 0.0 <= tb["gallery_misaligned_share"] <= 1.0
    rows = list(csv.DictReader((root / "plots" / "traceback.csv").open()))
    assert len(rows) == 3 and all(r["converged"] == "True" for r in rows)
    summary = (root / "reports" / "tables" / "summary.md").read_text()
    block = summary.split("## Trace-back: fix rate", 1)[1].split("\n## ", 1)[0]
    for key, row in tb["traceback"].items():  # the block-mode trace-back rows, with their numbers
        line = next(part for part in block.splitlines() if part.startswith(f"| {key} "))
        assert f"{row['margin_gain']:.3f}" in line and f"{row['fix_rate']:.3f}" in line, line
