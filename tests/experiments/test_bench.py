"""The benchmark's measurement of one configuration (ecif/experiments/bench.py), at a toy size:
every column is filled, the ratios are the columns' own quotients, every fit converged, and the
mixed-precision scores agree with the float64 ones to the solve's tolerance. (Seconds are never
asserted.)"""

import csv

import pytest

from ecif.experiments import bench


@pytest.fixture(scope="module")
def row():
    return bench.run_one(600, 64, dim=24, width=16, rank=2, subsample=100, precondition=128, progress=False,
                         precisions=("mixed", "float64"), threads=1)


def test_row_columns_and_ratios(row):
    assert set(bench.COLUMNS) <= set(row)
    assert row["params"] == 2 * (24 + 16) + 1 + 2 * (24 + 16)  # r (d_img + d_txt + 2e) + 1
    assert row["fit_converged"] and row["retrain_converged"] and row["cold_converged"]
    assert row["fit_grad_norm"] <= 1e-9 and row["retrain_grad_norm"] <= 1e-9 and row["cold_grad_norm"] <= 1e-9
    ecif_s = row["solve_s"] + row["score_s"]
    assert row["ecif_all_pairs_s"] == pytest.approx(ecif_s, abs=0.01)
    # the row rounds the retraining seconds to 0.01 and the ratios to 0.001: the quotient of the
    # rounded columns brackets the ratio
    for ratio, seconds in (("score_over_warm", "retrain_s"), ("score_over_cold", "cold_retrain_s")):
        lo, hi = ecif_s / (row[seconds] + 0.005), ecif_s / max(row[seconds] - 0.005, 1e-9)
        assert lo - 1e-3 <= row[ratio] <= hi + 1e-3, (ratio, row[ratio], lo, hi)
    assert row["precond_pairs"] == 128 and row["peak_rss_gib"] > 0


def test_mixed_and_float64_rows_agree(row):
    mixed, f64 = row["by_precision"]
    assert (mixed["precision"], f64["precision"]) == ("mixed", "float64")
    assert mixed["f32_products"] > 0 and mixed["f64_products"] >= 1 and f64["f32_products"] == 0
    assert mixed["relative_residual"] <= 1e-6 and f64["relative_residual"] <= 1e-6
    # both solves stop at rtol 1e-6: their scores differ by about that, not by a wrong formula
    assert f64["score_rel_diff"] < 1e-4 and mixed["score_rel_diff"] == 0.0


def test_csv_has_one_line_per_row(row, tmp_path):
    path = tmp_path / "rows.csv"
    bench.write_csv([row, row], str(path))
    lines = list(csv.DictReader(path.open()))
    assert len(lines) == 2 and lines[0]["precision"] == "mixed" and lines[0]["n"] == "600"
