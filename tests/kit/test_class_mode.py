"""Class mode (README "Class mode", ``make class``): the core stages with the small settings of
the Makefile's ``CLASS_PARAMS`` run end to end, write their metrics, and the fit converges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.kit.conftest import ROOT, run_pipeline

CORE = ["check_params", "inject", "encoder", "finetune", "loo", "detect"]


def class_overrides() -> dict:
    """``CLASS_PARAMS`` of the Makefile (``group.key=value`` words) as run_pipeline overrides."""
    line = re.search(r"^CLASS_PARAMS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert line, "Makefile has no CLASS_PARAMS"
    overrides: dict = {}
    for word in line.group(1).split():
        dotted, value = word.split("=", 1)
        group, key = dotted.split(".", 1)
        overrides.setdefault(group, {})[key] = yaml.safe_load(value)
    return overrides


def test_class_params_are_valid_and_documented() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = class_overrides()
    for group, values in overrides.items():
        for key in values:
            assert key in params[group], f"{group}.{key} is not a parameter"
    readme = (ROOT / "README.md").read_text()
    for group, values in overrides.items():
        for key, value in values.items():
            assert f"-S {group}.{key}={value}" in readme, f"README's class recipe lacks {group}.{key}={value}"


@pytest.mark.slow
def test_class_mode_runs_the_core_stages(tmp_path: Path) -> None:
    root = run_pipeline(tmp_path / "project", class_overrides(), CORE)
    fit = json.loads((root / "metrics" / "finetune.json").read_text())["fit"]
    assert fit["converged"] and fit["grad_norm"] < 1e-6
    loo = json.loads((root / "metrics" / "loo.json").read_text())["loo"]
    assert loo["n_pairs"] == class_overrides()["loo"]["n_pairs"] and loo["refit_all_converged"]
    assert (root / "metrics" / "detect.json").exists()
    for n in ("01_inject", "02_encoder", "03_finetune", "04_loo", "05_detect"):
        assert (root / "reports" / f"{n}.ipynb").exists(), n
