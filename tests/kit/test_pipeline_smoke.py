"""Smoke run of the whole DVC pipeline with tiny parameters, every notebook through papermill.

The run itself is the session fixture ``smoke_run`` of ``tests/kit/conftest.py``; the assertions
here are on the metrics files the notebooks write.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("positive", "negative", "ecif", "newton")
# the detect stage and every cell of the detection sweep report the same methods, in this order
METHODS = VARIANTS + ("self_ecif", "self_positive", "tracin", "pair_loss", "cosine", "random")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _metrics(root: Path, name: str) -> dict:
    return _flat(json.loads((root / "metrics" / f"{name}.json").read_text()))


def _is_timing(name: str) -> bool:
    return "second" in name or name.endswith("_s")


# the EMI stage moves its timings to its metrics' "time" group in a change of its own
_EMI = ("emi_", "11_emi")
# wall-clock times in a notebook's outputs: "1.2 s", "seconds", identifiers like fit_s, edit_s
_TIME_OUTPUT = re.compile(r"\d s\b|\bseconds\b|\b[a-z][a-z0-9_]*_s\b")


@pytest.mark.slow
def test_every_notebook_executed(smoke_run: Path) -> None:
    stage_notebooks = (ROOT / "dvc.yaml").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if f"notebooks/{nb.name}" not in stage_notebooks:  # 00: teaching, run by test_kernel.py
            continue
        if nb.stem == "06_detection_cell":  # one report per cell of the matrix, no HTML
            assert len(list((smoke_run / "reports").glob("06_detection_cell_*.ipynb"))) == 2
            continue
        assert (smoke_run / "reports" / nb.name).is_file()
        assert (smoke_run / "reports" / nb.with_suffix(".html").name).stat().st_size > 0


@pytest.mark.slow
def test_timings_only_in_the_metrics_time_groups(smoke_run: Path) -> None:
    """A rerun with the same numbers leaves every non-metric output byte-identical, so DVC
    reruns nothing downstream: wall-clock times live only under "time" in metrics/*.json."""
    fit = _flat(json.loads((smoke_run / "artifacts" / "finetune" / "fit.json").read_text()))
    assert not [k for k in fit if _is_timing(k.rsplit(".", 1)[-1])], fit
    tables = sorted((smoke_run / "plots").glob("*.csv")) + sorted((smoke_run / "reports" / "tables").glob("*.csv"))
    assert tables
    for table in tables:
        if not table.name.startswith(_EMI):
            with table.open(newline="") as f:
                header = next(csv.reader(f))
            assert not [c for c in header if _is_timing(c)], (table.name, header)
    for md in sorted((smoke_run / "reports" / "tables").glob("*.md")):
        cells = {c.strip() for line in md.read_text().splitlines() if line.startswith("|") for c in line.split("|")}
        assert not [c for c in cells if _is_timing(c)], md.name
    notebooks = sorted((smoke_run / "reports").glob("*.ipynb"))
    assert len(notebooks) > 10
    for path in notebooks:
        if path.name.startswith(_EMI):
            continue
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", [])) + "".join(
                    "".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
                found = _TIME_OUTPUT.findall(text)
                assert not found, (path.name, found, "".join(cell["source"])[:200])
    for name in ("finetune", "loo", "cleaning", "detection_sweep/systematic_swap_0.2_1"):
        m = _metrics(smoke_run, name)
        timings = [k for k in m if _is_timing(k.rsplit(".", 1)[-1])]
        assert timings and all(k.startswith("time.") for k in timings), (name, timings)
    m = _metrics(smoke_run, "finetune")
    assert m["time.fit_s"] > 0 and m["time.hessian_s"] > 0
    m = _metrics(smoke_run, "cleaning")
    assert m["time.cleaning.random.total_s"] >= m["time.cleaning.random.median_s"] > 0
    assert m["time.editing.ecif.retrain_median_s"] > 0 and m["time.editing.newton.edit_median_s"] > 0


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
def test_peers_metrics(smoke_run: Path) -> None:
    """Stage peers: every configured peer scored against the same LOO refits, times under time."""
    m = _metrics(smoke_run, "peers")
    for name in ("kronfluence_ekfac", "kronfluence_identity", "dattri_cg"):
        for stat in ("pearson", "spearman", "pearson_clean", "spearman_clean"):
            assert -1.0 <= m[f"peers.{name}.{stat}"] <= 1.0, (name, stat)
        assert 0.0 <= m[f"peers.{name}.auroc"] <= 1.0
        assert m[f"time.{name}_s"] > 0
    assert not [k for k in m if k.startswith("peers.") and k.endswith("_s")]
    # dattri's CG influence is the kit's positive variant: the same ranking of the LOO pairs
    assert m["peers.dattri_cg.spearman"] == pytest.approx(_metrics(smoke_run, "loo")["loo.positive.spearman"],
                                                          abs=0.05)


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


@pytest.mark.slow
def test_detection_sweep_metrics(smoke_run: Path) -> None:
    cell = _metrics(smoke_run, "detection_sweep/systematic_swap_0.2_1")
    assert cell["cell.fit_converged"] is True and cell["cell.n_train"] == 120
    assert 0 < cell["cell.n_misaligned"] < 120  # 20 % of all 400 pairs, the first 120 kept
    m = _metrics(smoke_run, "detection_summary")
    assert m["detection_grid.n_cells"] == 2
    for kind in ("systematic_swap",):
        for method in METHODS:
            for key in ("precision_at_k", "recall_at_k", "auroc", "average_precision"):
                value = m[f"detection_sweep.{kind}.{method}.{key}_mean"]
                assert 0.0 <= value <= 1.0, (kind, method, key, value)
                assert m[f"detection_sweep.{kind}.{method}.{key}_std"] >= 0.0
        assert m[f"detection_winner.{kind}.auroc"] in METHODS
    assert "| systematic_swap |" in (smoke_run / "reports" / "tables" / "detection.md").read_text()


@pytest.mark.slow
def test_ablation_metrics(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "ablation")
    for v in ("positive", "negative", "ecif"):
        assert math.isfinite(m[f"ablation_roles.{v}.pearson"]) and 0 <= m[f"ablation_roles.{v}.auroc"] <= 1
    assert m["sensitivity.lam.lam_3e-01.min_eigenvalue"] > m["sensitivity.lam.lam_1e-01.min_eigenvalue"] > 0
    assert m["sensitivity.damping.damping_0e+00.ecif.spearman"] > 0.5
    assert math.isfinite(m["sensitivity.batch_size.batch_size_32.ecif.pearson"])
    # the first batch size of the sweep is its own reference
    assert m["sensitivity.batch_size.batch_size_32.ecif.is_spearman_vs_first"] == pytest.approx(1.0)
    assert m["sensitivity.batch_size.batch_size_32.ecif.neg_to_pos"] > 0
    assert -1 <= m["sensitivity.batch_size.batch_size_120.ecif.loo_spearman_vs_first"] <= 1
    # metric keys carry no dots of their own (DVC joins nested keys with '.')
    assert all(k.count(".") <= 4 for k in m), [k for k in m if k.count(".") > 4]


@pytest.mark.slow
def test_cleaning_and_editing_metrics(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "cleaning")
    assert m["cleaning_n_removed"] == 12
    for method in ("none", "random", "ecif", "cosine", "self_ecif"):  # self_ecif: from the detect stage
        assert 0.0 <= m[f"cleaning.{method}.accuracy_mean"] <= 1.0
    assert m["cleaning.none.misaligned_removed"] == 0
    # the reference rows (issue 13): fitted on the clean captions, and the oracle deletion
    for method in ("clean", "oracle"):
        assert 0.0 <= m[f"cleaning.{method}.accuracy_mean"] <= 1.0, method
    assert m["cleaning.oracle.misaligned_removed"] > 0
    assert m["cleaning.gap"] == pytest.approx(m["cleaning.oracle.accuracy_mean"] - m["cleaning.none.accuracy_mean"])
    assert m["cleaning.random_std"] >= 0 and isinstance(m["cleaning.separable"], bool)
    curve = pd.read_csv(smoke_run / "plots" / "cleaning_curve.csv")
    assert sorted(curve.fraction.unique()) == [0.05, 0.2]
    table = pd.read_csv(smoke_run / "plots" / "cleaning.csv")  # default setting shapes_swap: one fit per noise seed
    assert set(table.noise_seed) == {0, 1} and (table[table.method == "oracle"].n_misaligned_removed > 0).all()
    assert {"none", "random", "oracle", "ecif", "cosine"} <= set(curve.method)
    assert (smoke_run / "reports" / "figures" / "08_cleaning_curve.png").stat().st_size > 0
    for frac in ("frac_5pct", "frac_20pct"):
        assert 0.0 <= m[f"cleaning_curve.{frac}.oracle"] <= 1.0
    # cold retraining (from theta0) next to the warm one; its wall time only under "time"
    assert 0.0 <= m["editing.harmful_ecif.acc_cold_retrained"] <= 1.0
    assert m["time.editing.ecif.cold_retrain_median_s"] > 0
    for kind in ("harmful", "valuable", "random"):
        for variant in ("ecif", "newton"):
            for key in ("predicted_val_change", "edited_val_change", "actual_val_change", "shift_rel_error"):
                assert math.isfinite(m[f"editing.{kind}_{variant}.{key}"]), (kind, variant, key)
        # one retraining per set, shared by both edits
        assert m[f"editing.{kind}_ecif.actual_val_change"] == m[f"editing.{kind}_newton.actual_val_change"]
    # the edit predicts the retrained change for the harmful and random sets; removing the most
    # valuable pairs of the tiny 2-epoch model can move the retraining into another basin
    for kind in ("harmful", "random"):
        pred, actual = m[f"editing.{kind}_ecif.predicted_val_change"], m[f"editing.{kind}_ecif.actual_val_change"]
        assert abs(pred - actual) <= 0.5 * abs(actual) + 1e-3, (kind, pred, actual)
    assert m["editing.harmful_ecif.actual_val_change"] < 0


@pytest.mark.slow
def test_traceback_and_summary(smoke_run: Path) -> None:
    m = _metrics(smoke_run, "traceback")
    assert m["traceback_items"] == 2
    for method in ("ris", "is", "random"):
        assert 0.0 <= m[f"traceback.{method}_k2.fix_rate"] <= 1.0
    summary = (smoke_run / "reports" / "tables" / "summary.md").read_text()
    for title in ("Table 1: cleaning", "Table 2: edited vs retrained", "Winner per misalignment kind",
                  "Peers against leave-one-out retraining"):
        assert title in summary
    assert "| oracle" in summary and "| clean" in summary and "acc_cold_retrained" in summary
