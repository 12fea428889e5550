"""The data switch end to end: the core stages (check_params, inject, encoder, finetune, loo,
detect) run unchanged on (b) a torchvision data set folder in its real on-disk format and (c)
caption folders, labelled and unlabelled, all written here with a few dozen generated images.
Each run asserts on the metrics it writes; the unlabelled run writes a null zero-shot accuracy
with a note, and the cleaning stage (which needs labels) stops at once saying why.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_caption_folder, write_cifar10

pytest.importorskip("papermill")

STAGES = ["check_params", "inject", "encoder", "finetune", "loo", "detect"]
TINY = {
    "noise": {"kind": "shuffle", "rate": 0.2, "n_gallery": 4},
    "encoder": {"epochs": 2},
    # lam 1.0: with 20 train pairs of strongly clustered features, lam 0.1 needs more than 100
    # Newton-CG steps (measured: grad norm 0.7 after 100); 1.0 converges in about 15
    "finetune": {"batch_size": 16, "n_train": None, "lam": 1.0},
    "loo": {"n_pairs": 4, "n_misaligned": 2},
}
SPLIT_SIZES = {"pretrain": 24, "train": 20, "val": 8, "test": 10}


def _run_pipeline():
    """``run_pipeline`` of this folder's conftest.py (imported by path: tests/ has two conftest modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kit_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_pipeline


def _run(tmp_path: Path, dataset: str, data: dict[str, Path]) -> Path:
    run_pipeline = _run_pipeline()
    overrides = dict(TINY, common={"dataset": dataset, "split_sizes": SPLIT_SIZES, "image_size": 16})
    return run_pipeline(tmp_path / "project", overrides, stages=STAGES, data=data)


def _metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def _check_core_metrics(root: Path) -> dict:
    fit = _metrics(root, "finetune")
    assert fit["fit"]["converged"] is True and fit["fit"]["grad_norm"] <= 1e-8
    assert fit["fit"]["n_train"] == SPLIT_SIZES["train"] and fit["fit"]["n_misaligned"] == 4
    assert fit["hessian"]["min_eigenvalue"] > 0
    loo = _metrics(root, "loo")["loo"]
    assert loo["n_pairs"] == 4 and loo["refit_all_converged"] is True
    for v in ("ecif", "newton", "positive", "negative"):
        assert math.isfinite(loo[v]["pearson"]) and math.isfinite(loo[v]["spearman"])
    detect = _metrics(root, "detect")
    assert detect["detect_k"] == 4
    for m in ("ecif", "newton", "cosine", "random"):
        assert 0.0 <= detect["detect"][m]["auroc"] <= 1.0
    return fit


@pytest.mark.slow
def test_torchvision_folder(tmp_path: Path) -> None:
    """(b) CIFAR-10 in torchvision's pickled-batch layout under data/cifar10."""
    source = write_cifar10(tmp_path / "cifar10", n_train=60, n_test=20)
    root = _run(tmp_path, "cifar10", {"data/cifar10": source})
    fit = _check_core_metrics(root)
    assert 0.0 <= fit["zero_shot"]["base"] <= 1.0 and 0.0 <= fit["zero_shot"]["fitted"] <= 1.0
    captions = json.loads((root / "artifacts" / "noise" / "noise_captions.json").read_text())
    assert all(c.startswith("a photo of a ") and c.endswith(".") for c in captions)


@pytest.mark.slow
def test_caption_folder_labelled(tmp_path: Path) -> None:
    """(c) a caption folder with a label column: zero-shot accuracy is measured."""
    source = write_caption_folder(tmp_path / "pairs", n=62, labels=True)
    root = _run(tmp_path, "captions:my_pairs", {"data/my_pairs": source})
    fit = _check_core_metrics(root)
    assert 0.0 <= fit["zero_shot"]["fitted"] <= 1.0 and "note" not in fit["zero_shot"]


@pytest.mark.slow
def test_caption_folder_unlabelled(tmp_path: Path) -> None:
    """(c) a caption folder without labels: zero-shot is null with a note; cleaning on the pipeline's
    fit (setting pipeline; the default fits its own shapes problems) says why it cannot run."""
    source = write_caption_folder(tmp_path / "pairs", n=62, labels=False)
    root = _run(tmp_path, "captions:my_pairs", {"data/my_pairs": source})
    fit = _check_core_metrics(root)
    assert fit["zero_shot"]["base"] is None and fit["zero_shot"]["fitted"] is None
    assert "no class labels" in fit["zero_shot"]["note"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "ecif.kit.notebook_runner", "cleaning", "--notebook",
                           "08_cleaning_editing", "--group", "finetune", "--group", "cleaning",
                           "--override", "setting=pipeline", "--no-html"],
                          cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "LabelsRequiredError" in proc.stderr and "needs class labels" in proc.stderr
    assert not (root / "metrics" / "cleaning.json").exists()
