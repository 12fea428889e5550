"""Smoke run of the whole DVC pipeline with tiny parameters, every notebook through papermill.

The stage commands are read from ``dvc.yaml`` and run in order, exactly as ``dvc repro`` would
run them, in a temporary copy of the project (``params.yaml`` shrunk: 2 encoder epochs, 120
train pairs, 8 leave-one-out refits), so the real ``artifacts/``, ``reports/`` and ``metrics/``
are never touched. The assertions are on the metrics files the notebooks write.
"""

from __future__ import annotations

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

pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("positive", "negative", "ecif", "newton")
METHODS = VARIANTS + ("tracin", "pair_loss", "cosine", "random")

TINY = {
    "noise": {"n_gallery": 4},
    "encoder": {"epochs": 2},
    "finetune": {"n_train": 120, "batch_size": 32},
    "loo": {"n_pairs": 8, "n_misaligned": 3},
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in TINY.items():
        params[group].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if (ROOT / "data" / params["common"]["dataset"]).is_dir():
        (root / "data").symlink_to(ROOT / "data", target_is_directory=True)
    else:  # data not pulled: the embedded data sets are rebuilt in memory
        from ecif.data import write_embedded

        write_embedded(root / "data")

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        proc = subprocess.run(
            shlex.split(stage["cmd"]),
            check=False,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (
            f"stage {name} failed:\n{proc.stdout}\n{proc.stderr}"
        )
        # every declared output exists
        for out in stage.get("outs", []) + stage.get("metrics", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            assert (root / path).exists(), f"stage {name} did not write {path}"
    return root


def _metrics(root: Path, name: str) -> dict:
    return _flat(json.loads((root / "metrics" / f"{name}.json").read_text()))


@pytest.mark.slow
def test_every_notebook_executed(smoke_run: Path) -> None:
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (smoke_run / "reports" / nb.name).is_file()
        assert (smoke_run / "reports" / nb.with_suffix(".html").name).stat().st_size > 0


@pytest.mark.slow
def test_fit_converged(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "finetune")
    assert m["fit.converged"] is True
    assert m["fit.grad_norm"] <= 1e-8
    assert m["fit.n_train"] == 120
    assert 0 < m["fit.n_misaligned"] < 120
    assert m["hessian.min_eigenvalue"] > 0
    assert 0.0 <= m["zero_shot.fitted"] <= 1.0


@pytest.mark.slow
def test_loo_metrics(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "loo")
    for v in VARIANTS:
        for stat in ("pearson", "spearman"):
            assert math.isfinite(m[f"loo.{v}.{stat}"]), (v, stat)
    assert m["loo.n_pairs"] == 8 and m["loo.n_misaligned"] == 3
    assert m["loo.refit_all_converged"] is True
    assert m["loo.refit_max_grad_norm"] <= 1e-8
    assert m["loo.ecif.pearson"] > 0.8
    assert m["loo.newton.pearson"] > 0.8
    assert m["time.ecif_all_pairs_s"] > 0 and m["time.retrain_one_s"] > 0
    table = (smoke_run / "plots" / "loo_scatter.csv").read_text().splitlines()
    assert (
        table[0].split(",")[:3] == ["pair", "misaligned", "actual"] and len(table) == 9
    )


@pytest.mark.slow
def test_detection_metrics(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "detect")
    assert m["detect_k"] == _metrics(smoke_run, "finetune")["fit.n_misaligned"]
    for method in METHODS:
        for key in ("precision_at_k", "recall_at_k", "auroc", "average_precision"):
            value = m[f"detect.{method}.{key}"]
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (method, key, value)
    # influence finds misaligned pairs better than chance even in the tiny run
    assert m["detect.ecif.auroc"] > 0.6
    header = (smoke_run / "plots" / "detect_precision.csv").read_text().splitlines()[0]
    assert header.split(",") == ["k", *METHODS]
