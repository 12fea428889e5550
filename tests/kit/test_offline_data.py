"""Missing data stops the first stage that reads it (``inject``) before its notebook starts: in a
couple of seconds, with an error naming what is missing, where the stage looked and how to
provide it, and with nothing written (no ``artifacts/noise``, no report)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_data import write_caption_folder

ROOT = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path, **common) -> Path:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["common"].update(common)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data").mkdir()
    return root


def _run(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True)
    return proc, time.perf_counter() - t


def _inject(root: Path):
    proc, seconds = _run(root, "-m", "ecif.kit.notebook_runner", "inject", "--group", "noise")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert seconds < 10  # interpreter start included; the check itself takes milliseconds
    assert not (root / "artifacts").exists(), "a failed data check wrote artifacts"
    assert not list(root.glob("reports/01_inject*")), "a failed data check wrote a report"
    return proc.stderr


@pytest.mark.parametrize("name, missing", [("cifar10", "cifar-10-batches-py"), ("fgvc_aircraft", "fgvc-aircraft-2013b"),
                                           ("flowers102", "flowers-102/imagelabels.mat")])
def test_missing_torchvision_folder_stops_inject(tmp_path, name, missing):
    root = _project(tmp_path, dataset=name)
    err = _inject(root)
    assert f"data set {name!r} is not in 'data/{name}'" in err and missing in err
    assert "download=True" in err and "copy the folder" in err and "Nothing was executed" in err


def test_missing_caption_folder_and_files_stop_inject(tmp_path):
    root = _project(tmp_path, dataset="captions:pairs")
    assert "caption folder 'pairs' not found (looked in 'data/pairs', 'pairs')" in _inject(root)
    write_caption_folder(root / "data" / "pairs", n=10, labels=False)
    (root / "data" / "pairs" / "img" / "0004.png").unlink()
    assert "1 image file(s) named in 'data/pairs/captions.csv' are not in 'data/pairs': img/0004.png" in _inject(root)
    (root / "data" / "pairs" / "captions.csv").write_text("path,caption\nimg/0001.png,a cat\n")
    assert "lacks the column(s) file" in _inject(root)


def test_check_params_refuses_label_noise_on_caption_folders(tmp_path):
    root = _project(tmp_path, dataset="captions:pairs")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["noise"]["kind"] = "label_flip"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc, seconds = _run(root, "-m", "ecif.kit.params", "check", "--ok-file", "artifacts/params.ok")
    assert proc.returncode == 2 and seconds < 10
    assert "free text (a caption folder). Fix: set noise.kind to shuffle" in proc.stderr
    assert not (root / "artifacts" / "params.ok").exists()
