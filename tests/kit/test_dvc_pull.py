"""Plain `dvc pull` works in a fresh clone: the only cached output is data/, held by dvc-remote/.

Stage outputs are rebuilt by `dvc repro` and never stored in a remote, so every one of them is
``cache: false`` (an output that DVC caches but no remote holds makes `dvc pull` fail with
"missing files"; ``push: false`` does not change that, it only concerns `dvc push`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _outs(stage: dict) -> list[tuple[str, dict]]:
    found = []
    for section in ("outs", "metrics", "plots"):
        for out in stage.get(section, []) or []:
            if isinstance(out, dict):
                (path, flags), = out.items()
                found.append((path, flags or {}))
            else:
                found.append((out, {}))
    return found


def test_every_stage_output_is_uncached() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cached = [f"{name}: {path}" for name, stage in stages.items() for path, flags in _outs(stage)
              if flags.get("cache", True)]
    assert not cached, f"cached stage outputs make a fresh clone's `dvc pull` fail: {cached}"


def _dvc() -> str | None:
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.is_file() else shutil.which("dvc")


@pytest.mark.skipif(_dvc() is None or shutil.which("git") is None, reason="needs git and dvc")
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_plain_dvc_pull_in_a_fresh_clone(tmp_path: Path) -> None:
    """The committed HEAD, cloned: `dvc pull` exits 0 and brings the embedded data sets."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run([_dvc(), "pull"], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("digits", "shapes"):
        assert (clone / "data" / name / "meta.json").is_file(), name
