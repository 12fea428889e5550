"""The ``emi`` stage (notebook 11_emi): its metrics from the shared tiny pipeline run
(``smoke_run`` in ``tests/kit/conftest.py``: one shift level and seed, two rates), and the
shaping of its metrics alone (fast).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("papermill")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        assert "." not in str(k), f"metric key with a dot: {prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow
def test_emi_stage_outputs_and_metrics(smoke_run: Path) -> None:
    m = _flat(json.loads((smoke_run / "metrics" / "emi.json").read_text()))
    assert all(k.startswith("emi.") for k in m)
    assert m["emi.shift.n_scenarios"] == 8 and m["emi.shift.n_seeds"] == 1
    for pair in ("emid_bound", "emid_acc_drop", "bound_acc_drop"):
        r = m[f"emi.shift.corr_{pair}.spearman"]
        assert -1 <= r <= 1
        assert m[f"emi.shift.corr_{pair}.spearman_lo"] <= r + 1e-12
    for kind in ("shuffle", "systematic_swap"):
        cell = f"emi.misalignment.{kind}_r20"
        assert m[f"{cell}.n_misaligned"] > 0
        assert 0 <= m[f"{cell}.precision_ecif"] <= 1 and math.isfinite(m[f"{cell}.emi"])
        for s in ("ecif", "random", "oracle"):
            assert math.isfinite(m[f"{cell}.emi_after_{s}"])
        assert m[f"{cell}.misaligned_removed_oracle"] == m[f"{cell}.n_misaligned"]
        assert m[f"emi.marginals.{kind}_r20.jsd_images"] == 0.0
    # the rate-0 model is shared by both kinds
    assert m["emi.misalignment.shuffle_r00.emi"] == m["emi.misalignment.systematic_swap_r00.emi"]
    # a consistent relabelling is invisible to the discrete MI
    assert m["emi.relabelling.dmi_emi"] == pytest.approx(0.0, abs=1e-12)
    assert m["emi.relabelling.accuracy"] < 1.0
    assert (smoke_run / "reports" / "11_emi.html").stat().st_size > 0
    header = (smoke_run / "plots" / "emi_shifts.csv").read_text().splitlines()[0].split(",")
    assert {"scenario", "modality", "emid", "bound"} <= set(header)


def test_metrics_shaping_has_no_dotted_keys() -> None:
    import pandas as pd

    from ecif.kit import emi_stage

    assert emi_stage.rate_key("shuffle", 0.05) == "shuffle_r05"
    assert emi_stage.rate_key("systematic_swap", 0.3) == "systematic_swap_r30"
    grid = pd.DataFrame({"scenario": ["a", "b", "c"], "seed": [0, 0, 0]})
    corr = pd.DataFrame([{"x": "emid", "y": "bound", "seed": "mean", "pearson": 0.5, "pearson_lo": 0.1,
                          "pearson_hi": 0.9, "spearman": 0.4, "spearman_lo": 0.0, "spearman_hi": 0.8},
                         {"x": "emid", "y": "bound", "seed": "0", "pearson": 0.5, "pearson_lo": 0.1,
                          "pearson_hi": 0.9, "spearman": 0.4, "spearman_lo": 0.0, "spearman_hi": 0.8}])
    models = pd.DataFrame([{"kind": "shuffle", "rate": 0.0, "emi": -1.0, "precision_ecif": float("nan"),
                            "seconds": 1.0},
                           {"kind": "shuffle", "rate": 0.05, "emi": -2.0, "precision_ecif": 0.9, "seconds": 1.0}])
    marg = pd.DataFrame([{"kind": "shuffle", "rate": 0.05, "jsd_captions": 0.0}])
    m = emi_stage.metrics(grid, corr, models, marg, {"dmi_emi": 0.0}, {"stage_s": 3.0})
    flat = _flat(m)
    assert flat["shift.corr_emid_bound.spearman"] == 0.4 and flat["shift.n_scenarios"] == 3
    assert flat["misalignment.shuffle_r05.precision_ecif"] == 0.9
    assert "misalignment.shuffle_r00.precision_ecif" not in flat  # nan dropped
    assert flat["marginals.shuffle_r05.jsd_captions"] == 0.0
