"""ecif.kit.reports: the aggregation the notebooks used to hold, on hand-made inputs with known
answers, and against the committed metrics files of the last full pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecif.kit import reports as R

ROOT = Path(__file__).resolve().parents[2]


def test_metric_keys_have_no_dots() -> None:
    assert R.metric_key("lam", 0.03) == "lam_3e-02"
    assert R.metric_key("damping", np.float64(0.0)) == "damping_0e+00"
    assert R.metric_key("batch_size", np.int64(64)) == "batch_size_64"
    assert R.rate_key(0.1) == "rate_10pct" and R.rate_key(0.3) == "rate_30pct"


def _cell(auroc_a: float, auroc_b: float, prec_a: float = 0.5, prec_b: float = 0.4) -> dict:
    return {"detect": {"ecif": {"precision_at_k": prec_a, "recall_at_k": prec_a, "auroc": auroc_a,
                                "average_precision": 0.3},
                       "cosine": {"precision_at_k": prec_b, "recall_at_k": prec_b, "auroc": auroc_b,
                                  "average_precision": 0.2}}}


@pytest.fixture()
def sweep_cells() -> dict:
    # kind "a": cosine wins AUROC, ecif wins precision; kind "b": ecif wins both
    return {("a", 0.1, 0): _cell(0.6, 0.9, 0.7, 0.1), ("a", 0.1, 1): _cell(0.8, 0.7, 0.5, 0.3),
            ("b", 0.1, 0): _cell(0.9, 0.5), ("b", 0.1, 1): _cell(0.7, 0.5)}


def test_sweep_stats_winners_and_summary(sweep_cells: dict) -> None:
    long = R.sweep_long_table(sweep_cells)
    assert len(long) == 8
    stats = R.sweep_stats(long)
    assert stats.loc[("a", 0.1, "ecif"), ("auroc", "mean")] == pytest.approx(0.7)
    assert stats.loc[("a", 0.1, "ecif"), ("auroc", "std")] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    win = R.sweep_winners(long)
    assert win.loc["a", "winner_auroc"] == "cosine" and win.loc["a", "ecif_rank"] == 2
    assert win.loc["a", "winner_precision_at_k"] == "ecif"
    assert win.loc["b", "winner_auroc"] == "ecif" and win.loc["b", "ecif_rank"] == 1
    summ = R.sweep_summary(long, ["a", "b"], [0.1], [0, 1])
    assert summ["detection_sweep"]["a"]["cosine"]["auroc_mean"] == pytest.approx(0.8)
    assert summ["detection_sweep"]["a"]["cosine"]["auroc_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert summ["detection_by_rate"]["b"]["rate_10pct"]["ecif"]["auroc_mean"] == pytest.approx(0.8)
    assert summ["detection_winner"]["a"] == {"auroc": "cosine", "precision_at_k": "ecif", "ecif_rank_auroc": 2}
    assert summ["detection_grid"]["n_cells"] == 4
    md = R.sweep_markdown(stats, win, [0, 1])
    assert "| a | 0.1 | ecif | 0.600 ± 0.141 |" in md and "| a | cosine (0.800) | ecif (0.600) | 0.700 (2) |" in md


def test_single_seed_reports_zero_spread(sweep_cells: dict) -> None:
    one = {key: v for key, v in sweep_cells.items() if key[2] == 0}
    summ = R.sweep_summary(R.sweep_long_table(one), ["a", "b"], [0.1], [0])
    assert summ["detection_sweep"]["a"]["ecif"]["auroc_std"] == 0.0
    assert summ["detection_by_rate"]["a"]["rate_10pct"]["ecif"]["auroc_std"] == 0.0


def test_sweep_without_cells_is_an_error() -> None:
    with pytest.raises(ValueError, match="detection_cell"):
        R.sweep_long_table({})


def test_precision_curves_average_over_cells() -> None:
    mask = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    perfect = pd.DataFrame({"pair": range(6), "m": [6, 5, 4, 3, 2, 1], "misaligned": mask})
    worst = pd.DataFrame({"pair": range(6), "m": [1, 2, 3, 4, 5, 6], "misaligned": mask})
    curves = R.sweep_precision_curves({("a", 0.1, 0): perfect, ("a", 0.1, 1): worst}, fractions=[0.5, 1.0])
    row = curves[(curves.method == "m") & (curves.k_over_injected == 1.0)].iloc[0]
    assert row.precision == pytest.approx(0.5)  # precision@2 is 1 and 0
    assert row["std"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert set(curves.columns) == {"kind", "method", "k_over_injected", "precision", "std"}


def test_role_table_and_sensitivity_keys() -> None:
    loo = pd.DataFrame({"actual": [1.0, 2.0, 3.0, 4.0], "ecif": [1.1, 2.1, 2.9, 4.2],
                        "positive": [4.0, 3.0, 2.0, 1.0], "negative": [0.0, 1.0, 0.0, 1.0]})
    scores = pd.DataFrame({"misaligned": [1, 1, 0, 0], "ecif": [0.9, 0.8, 0.1, 0.2],
                           "positive": [0.1, 0.2, 0.9, 0.8], "negative": [0.5, 0.5, 0.5, 0.5]})
    roles = R.role_table(loo, scores)
    assert roles["ecif"]["spearman"] == pytest.approx(1.0) and roles["ecif"]["auroc"] == pytest.approx(1.0)
    assert roles["positive"]["spearman"] == pytest.approx(-1.0) and roles["positive"]["auroc"] == 0.0
    assert roles["negative"]["precision_at_k"] == pytest.approx(0.5)
    tab = pd.DataFrame({"lam": [0.03, 0.03, 1.0, 1.0], "variant": ["ecif", "positive"] * 2,
                        "min_eigenvalue": [0.1, 0.1, 0.5, 0.5], "pearson": [0.9, 0.8, 0.7, 0.6],
                        "spearman": [0.9, 0.8, 0.7, 0.6], "auroc": [0.5] * 4, "precision_at_k": [0.5] * 4,
                        "neg_to_pos": [0.2, 0.3, 0.4, 0.5]})
    sens = R.sensitivity_metrics(tab, "lam", extra=("neg_to_pos",))
    assert list(sens) == ["lam_3e-02", "lam_1e+00"]
    assert sens["lam_1e+00"]["min_eigenvalue"] == 0.5 and sens["lam_3e-02"]["positive"]["neg_to_pos"] == 0.3
    long = R.sweep_table({"lam": tab})
    assert list(long["sweep"].unique()) == ["lam"] and list(long["value"]) == [0.03, 0.03, 1.0, 1.0]


def test_cleaning_editing_and_traceback_tables() -> None:
    clean = pd.DataFrame({"method": ["none", "ecif", "random", "random"], "accuracy": [0.9, 0.95, 0.9, 0.92],
                          "n_misaligned_removed": [0, 3, 1, 2]})
    summary = R.cleaning_summary(clean)
    edit = pd.DataFrame({"set": ["harmful", "random_0", "random_1"], "variant": ["ecif"] * 3,
                         **{c: [1.0, 2.0, 4.0] for c in R.EDIT_COLUMNS}})
    m = R.cleaning_metrics(summary, R.editing_summary(edit), n_removed=3)
    assert m["cleaning"]["random"] == {"accuracy_mean": pytest.approx(0.91), "accuracy_std": pytest.approx(np.std([0.9, 0.92], ddof=1)),
                                       "misaligned_removed": 1.5}
    assert m["cleaning"]["none"]["accuracy_std"] == 0.0  # one run: no spread, not NaN
    assert m["editing"]["random_ecif"]["shift_rel_error"] == 3.0
    assert not any(R.is_timing(k) for row in m["editing"].values() for k in row)  # timings: split_timings
    cf = pd.DataFrame({"method": ["ris", "ris", "random"], "k": [5, 5, 5], "fixed": [True, False, False],
                       "improved": [True, True, False], "misaligned_removed": [2, 4, 1],
                       "margin_before": [-1.0, -2.0, -1.0], "margin_after": [0.5, -1.0, -1.5]})
    rates = R.traceback_rates(cf)
    assert rates.loc[("ris", 5), "fixed"] == 0.5 and rates.loc[("ris", 5), "margin_gain"] == pytest.approx(1.25)
    tm = R.traceback_metrics(rates, n_items=2, n_wrong=7, gallery_share=0.25)
    assert tm["traceback"]["random_k5"]["margin_gain"] == pytest.approx(-0.5) and tm["test_mispredicted"] == 7


def test_split_timings_moves_every_timing_column_and_keeps_its_values() -> None:
    edit = pd.DataFrame({"set": ["h", "r_0", "r_1"], "variant": ["ecif", "ecif", "newton"],
                         "acc_s_note": ["a", "b", "c"], "edit_s": [1.0, 2.0, 6.0], "retrain_s": [3.0, 5.0, 7.0],
                         "retrain_grad_norm": [0.1, 0.2, 0.3]})
    rest, times = R.split_timings(edit)
    assert list(rest.columns) == ["set", "variant", "acc_s_note", "retrain_grad_norm"]  # not a timing
    assert not any(R.is_timing(c) for c in rest.columns)
    assert rest["retrain_grad_norm"].tolist() == [0.1, 0.2, 0.3] and "edit_s" in edit.columns  # input untouched
    assert times == {"edit_total_s": 9.0, "edit_median_s": 2.0, "retrain_total_s": 15.0, "retrain_median_s": 5.0}
    _, by = R.split_timings(edit, by="variant")
    assert by == {"ecif": {"edit_total_s": 3.0, "edit_median_s": 1.5, "retrain_total_s": 8.0, "retrain_median_s": 4.0},
                  "newton": {"edit_total_s": 6.0, "edit_median_s": 6.0, "retrain_total_s": 7.0, "retrain_median_s": 7.0}}
    clean = pd.DataFrame({"method": ["none", "random", "random"], "accuracy": [0.9, 0.8, 0.7], "seconds": [1.0, 2.0, 4.0]})
    rest, by = R.split_timings(clean, by="method")
    assert list(rest.columns) == ["method", "accuracy"]
    assert by == {"none": {"total_s": 1.0, "median_s": 1.0}, "random": {"total_s": 6.0, "median_s": 3.0}}
    assert all(k.endswith("_s") for d in by.values() for k in d)
    info = {"n_train": 120, "fit_converged": True, "features_s": 1.5, "fit_s": 2.5, "solver": "dense"}
    rest, times = R.split_timings(info)
    assert rest == {"n_train": 120, "fit_converged": True, "solver": "dense"}
    assert times == {"features_s": 1.5, "fit_s": 2.5}
    assert R.split_timings(pd.DataFrame({"a": [1]}))[1] == {}


# ------------------------------------------- the committed outputs of the last full run


def _committed(name: str):
    path = ROOT / name
    if not path.is_file():
        pytest.skip(f"{name} not present (run `make repro`)")
    return json.loads(path.read_text()) if path.suffix == ".json" else pd.read_csv(path)


def test_reproduces_the_committed_sweep_summary() -> None:
    summary = _committed("metrics/detection_summary.json")
    grid = summary["detection_grid"]
    files = {(k, r, s): ROOT / f"metrics/detection_sweep/{k}_{r}_{s}.json"
             for k in grid["kinds"] for r in grid["rates"] for s in grid["seeds"]}
    if not all(f.is_file() for f in files.values()):
        pytest.skip("detection cell metrics not all present (run `make repro`)")
    cells = {cell: json.loads(f.read_text()) for cell, f in files.items()}
    again = R.sweep_summary(R.sweep_long_table(cells), grid["kinds"], grid["rates"], grid["seeds"])
    assert json.loads(json.dumps(again)) == summary


def test_reproduces_the_committed_cleaning_and_traceback_metrics() -> None:
    cleaning = _committed("metrics/cleaning.json")
    clean, edit = _committed("plots/cleaning.csv"), _committed("plots/editing.csv")
    from ecif.experiments.cleaning import table_separation

    separation = table_separation(clean) if "gap" in cleaning["cleaning"] else None  # runs with reference rows
    again = R.cleaning_metrics(R.cleaning_summary(clean), R.editing_summary(edit), cleaning["cleaning_n_removed"],
                               separation)
    for key in ("cleaning", "editing"):
        assert again[key].keys() == cleaning[key].keys()
        for name, vals in again[key].items():
            if not isinstance(vals, dict):  # cleaning.gap, random_std, separable
                assert vals == pytest.approx(cleaning[key][name], rel=1e-8, abs=1e-8), name
                continue
            # files of a run before the timings moved to the "time" group still hold edit_s, retrain_s
            committed = {k: v for k, v in cleaning[key][name].items() if not R.is_timing(k)}
            assert vals == pytest.approx(committed, rel=1e-8, abs=1e-8), name  # the CSVs hold 10 digits
    tb = _committed("metrics/traceback.json")
    rates = R.traceback_rates(_committed("plots/traceback.csv"))
    again = R.traceback_metrics(rates, tb["traceback_items"], tb["test_mispredicted"], tb["gallery_misaligned_share"])
    assert again["traceback"].keys() == tb["traceback"].keys()
    for name, vals in again["traceback"].items():
        assert vals == pytest.approx(tb["traceback"][name], rel=1e-8, abs=1e-8), name  # the CSVs hold 10 digits


def test_emi_sections_from_a_hand_made_metrics_dict() -> None:
    corr = {"pearson": 0.8, "pearson_lo": 0.6, "pearson_hi": 0.9, "spearman": 0.89, "spearman_lo": 0.72,
            "spearman_hi": 0.96}
    emi = {"shift": {"corr_emid_acc_drop": corr, "corr_emid_bound": dict(corr, spearman=0.6),
                     "n_scenarios": 24, "n_seeds": 3},
           "misalignment": {
               "systematic_swap_r20": {"n_seeds": 3.0, "accuracy_mean": 0.5, "accuracy_std": 0.02,
                                       "emi_mean": -30.44, "emi_std": 2.5, "precision_ecif_mean": 0.425,
                                       "precision_ecif_std": 0.05, "emi_after_ecif_mean": -3.6,
                                       "emi_after_ecif_std": 1.0},
               "shuffle_r05": {"n_seeds": 3.0, "accuracy_mean": 0.59, "accuracy_std": 0.0, "emi_mean": -6.6,
                               "emi_std": 1.25},
               "shuffle_r00": {"n_seeds": 3.0, "accuracy_mean": 0.61, "accuracy_std": 0.0, "emi_mean": -5.0,
                               "emi_std": 0.0},
               "shuffle_r10": {"accuracy": 0.57, "emi": 3.75}},  # a cell of the one-seed format
           "relabelling": {"dmi_emi": 0.0}}
    sections = R.emi_sections(emi)
    (ta, a), (tb, b) = sections.items()
    assert "24 shift scenarios" in ta and "3 seeds" in ta
    assert a.loc["emid_acc_drop", "spearman"] == 0.89 and a.loc["emid_bound", "spearman"] == 0.6
    assert list(a.columns) == ["pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo", "spearman_hi"]
    assert list(b.index) == [("shuffle", 0), ("shuffle", 5), ("shuffle", 10), ("systematic_swap", 20)]
    assert b.loc[("systematic_swap", 20), "emi"] == "-30.4 ± 2.5"
    assert b.loc[("systematic_swap", 20), "precision_ecif"] == "0.425 ± 0.050"
    assert b.loc[("systematic_swap", 20), "emi_after_ecif"] == "-3.6 ± 1.0"
    assert b.loc[("systematic_swap", 20), "emi_after_oracle"] == "–"
    assert b.loc[("shuffle", 0), "precision_ecif"] == "–" and b.loc[("shuffle", 0), "n_seeds"] == 3
    assert b.loc[("shuffle", 10), "emi"] == "3.8 ± 0.0" and b.loc[("shuffle", 10), "n_seeds"] == 1
    md = R.summary_markdown(sections)
    assert "## EMI A:" in md and "## EMI B:" in md and "-30.4 ± 2.5" in md


def test_cleaning_reference_rows_separation_and_curve_metrics() -> None:
    clean = pd.DataFrame({"method": ["none", "random", "random", "oracle", "clean"],
                          "accuracy": [0.80, 0.80, 0.82, 0.90, 0.95], "n_misaligned_removed": [0, 1, 2, 5, 0]})
    sep = {"gap": 0.1, "random_std": float("nan"), "separable": False, "statement": "gap within noise: ..."}
    curve = pd.DataFrame({"fraction": [0.05, 0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 0.2],
                          "method": ["none", "random", "random", "oracle"] * 2,
                          "accuracy": [0.8, 0.7, 0.9, 0.85, 0.8, 0.6, 0.8, 0.95],
                          "n_removed": [0, 2, 2, 2, 0, 8, 8, 5], "n_misaligned_removed": [0, 1, 0, 2, 0, 2, 1, 5]})
    cs = R.curve_summary(curve)
    assert list(cs.columns) == ["fraction", "method", "accuracy_mean", "accuracy_std", "n_removed",
                                "n_misaligned_removed"]
    r = cs.set_index(["fraction", "method"])
    assert r.loc[(0.2, "random"), "accuracy_mean"] == pytest.approx(0.7)
    assert r.loc[(0.2, "random"), "accuracy_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert r.loc[(0.2, "oracle"), "accuracy_std"] == 0.0 and r.loc[(0.2, "random"), "n_misaligned_removed"] == 1.5
    edit = pd.DataFrame({"set": ["harmful"], "variant": ["ecif"], "acc_edited": [0.9], "acc_retrained": [0.9],
                         "acc_cold_retrained": [0.8]})
    m = R.cleaning_metrics(R.cleaning_summary(clean), R.editing_summary(edit), 3, separation=sep, curve=cs)
    assert m["cleaning"]["oracle"]["accuracy_mean"] == 0.9 and m["cleaning"]["clean"]["accuracy_mean"] == 0.95
    assert m["cleaning"]["gap"] == 0.1 and m["cleaning"]["random_std"] == 0.0 and m["cleaning"]["separable"] is False
    assert m["cleaning_curve"] == {"frac_5pct": {"none": 0.8, "random": pytest.approx(0.8), "oracle": 0.85},
                                   "frac_20pct": {"none": 0.8, "random": pytest.approx(0.7), "oracle": 0.95}}
    assert m["editing"]["harmful_ecif"] == {"acc_edited": 0.9, "acc_retrained": 0.9, "acc_cold_retrained": 0.8}
    assert all("." not in k for k in m["cleaning"]) and all("." not in k for k in m["cleaning_curve"])
    assert R.fraction_key(0.05) == "frac_5pct" and R.fraction_key(0.1) == "frac_10pct"
    assert "gap" not in R.cleaning_metrics(R.cleaning_summary(clean), R.editing_summary(edit), 3)["cleaning"]


def test_runtime_table_from_the_time_group() -> None:
    time = {"hessian_factorise_s": 0.5,
            "editing": {"ecif": {"edit_median_s": 0.01, "retrain_median_s": 0.6, "cold_retrain_median_s": 3.0},
                        "newton": {"edit_median_s": 0.02, "retrain_median_s": 0.6}}}
    t = R.runtime_table(time)
    assert list(t.index) == ["ecif", "newton"]
    assert list(t.columns) == ["edit_median_s", "warm_retrain_median_s", "cold_retrain_median_s", "hessian_factorise_s"]
    assert t.loc["ecif", "cold_retrain_median_s"] == 3.0 and t.loc["newton", "warm_retrain_median_s"] == 0.6
    assert np.isnan(t.loc["newton", "cold_retrain_median_s"]) and (t["hessian_factorise_s"] == 0.5).all()
    assert R.runtime_table({}).empty


def test_peers_table_from_a_hand_made_metrics_dict() -> None:
    """The summary's peers table: one row per peer of metrics/peers.json, the five agreement
    columns in order, a missing column as NaN, the time group left out."""
    peers = {"peers": {"kronfluence_ekfac": {"pearson": 0.9, "spearman": 0.8, "pearson_clean": 0.7,
                                             "spearman_clean": 0.6, "auroc": 0.95},
                       "dattri_cg": {"pearson": 0.5, "spearman": 0.4, "auroc": 0.55}},
             "time": {"kronfluence_ekfac_s": 3.0, "dattri_cg_s": 1.0}}
    t = R.peers_table(peers)
    assert list(t.index) == ["kronfluence_ekfac", "dattri_cg"] and list(t.columns) == list(R.PEER_COLUMNS)
    assert t.loc["kronfluence_ekfac", "spearman_clean"] == 0.6 and t.loc["dattri_cg", "auroc"] == 0.55
    assert np.isnan(t.loc["dattri_cg", "pearson_clean"])
    assert not [c for c in t.columns if c.endswith("_s")]


def test_summary_sections_add_the_peers_table_only_with_peers_metrics() -> None:
    """summary_sections: the peers section appears when metrics["peers"] is given, else not."""
    base = {"ablation": {"ablation_roles": {"ecif": {"spearman": 0.9}},
                         "sensitivity": {s: {} for s in ("damping", "lam", "batch_size")}},
            "detection_summary": {"detection_sweep": {}, "detection_winner": {}},
            "cleaning": {"cleaning": {"none": {"accuracy_mean": 0.5}}, "editing": {}},
            "traceback": {"traceback": {}}}
    title = "Peers against leave-one-out retraining"
    assert title not in R.summary_sections(base)
    with_peers = R.summary_sections(dict(base, peers={"peers": {"dattri_cg": {"pearson": 0.5, "spearman": 0.4,
                                                                               "pearson_clean": 0.3,
                                                                               "spearman_clean": 0.2,
                                                                               "auroc": 0.6}}}))
    assert with_peers[title].loc["dattri_cg", "auroc"] == 0.6
    assert title in R.summary_markdown(with_peers)
