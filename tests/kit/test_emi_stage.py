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
    raw = json.loads((smoke_run / "metrics" / "emi.json").read_text())
    assert set(raw) == {"emi", "time"}  # timings only under the top-level time group
    assert raw["time"]["stage_s"] > 0 and "time" not in raw["emi"]
    m = _flat({"emi": raw["emi"]})
    assert m["emi.shift.n_scenarios"] == 8 and m["emi.shift.n_seeds"] == 1
    for pair in ("emid_bound", "emid_acc_drop", "bound_acc_drop"):
        r = m[f"emi.shift.corr_{pair}.spearman"]
        assert -1 <= r <= 1
        assert m[f"emi.shift.corr_{pair}.spearman_lo"] <= r + 1e-12
    for kind in ("shuffle", "systematic_swap"):
        cell = f"emi.misalignment.{kind}_r20"
        assert m[f"{cell}.n_seeds"] == 1 and m[f"{cell}.emi_std"] == 0.0
        assert m[f"{cell}.n_misaligned_mean"] > 0
        assert 0 <= m[f"{cell}.precision_ecif_mean"] <= 1 and math.isfinite(m[f"{cell}.emi_mean"])
        for s in ("ecif", "random", "oracle"):
            assert math.isfinite(m[f"{cell}.emi_after_{s}_mean"])
            assert m[f"{cell}.emi_after_{s}_std"] == 0.0
        assert m[f"{cell}.misaligned_removed_oracle_mean"] == m[f"{cell}.n_misaligned_mean"]
        assert m[f"emi.marginals.{kind}_r20.jsd_images_mean"] == 0.0
    # the rate-0 model is shared by both kinds
    assert m["emi.misalignment.shuffle_r00.emi_mean"] == m["emi.misalignment.systematic_swap_r00.emi_mean"]
    # a consistent relabelling is invisible to the discrete MI
    assert m["emi.relabelling.dmi_emi"] == pytest.approx(0.0, abs=1e-12)
    assert m["emi.relabelling.accuracy"] < 1.0
    assert (smoke_run / "reports" / "11_emi.html").stat().st_size > 0
    header = (smoke_run / "plots" / "emi_shifts.csv").read_text().splitlines()[0].split(",")
    assert {"scenario", "modality", "emid", "bound"} <= set(header)
    header = (smoke_run / "plots" / "emi_misalignment.csv").read_text().splitlines()[0].split(",")
    assert {"kind", "rate", "noise_seed", "emi"} <= set(header) and "seconds" not in header
    executed = json.loads((smoke_run / "reports" / "11_emi.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "B. shuffle: EMI at 20 %" in printed and "_s'" not in printed  # findings printed, no timings


def _models():
    import pandas as pd

    rows = [{"kind": "shuffle", "rate": 0.0, "noise_seed": sd, "emi": -5.0, "accuracy": 0.6,
             "precision_ecif": float("nan")} for sd in (0, 1, 2)]
    for sd, (emi, acc, prec, after) in enumerate([(-6.0, 0.5, 0.8, -5.0), (-8.0, 0.4, 0.9, -6.0),
                                                  (-10.0, 0.3, 1.0, -4.0)]):
        rows.append({"kind": "shuffle", "rate": 0.2, "noise_seed": sd, "emi": emi, "accuracy": acc,
                     "precision_ecif": prec, "precision_random": 0.2, "emi_after_ecif": after})
    return pd.DataFrame(rows)


def test_seed_summary_known_answers() -> None:
    from ecif.kit import emi_stage

    s = emi_stage.seed_summary(_models()).set_index(["kind", "rate"])
    r = s.loc[("shuffle", 0.2)]
    assert r["n_seeds"] == 3
    assert r["emi_mean"] == pytest.approx(-8.0) and r["emi_std"] == pytest.approx(2.0)  # ddof 1
    assert (r["emi_min"], r["emi_max"]) == (-10.0, -6.0)
    assert r["accuracy_mean"] == pytest.approx(0.4) and r["accuracy_std"] == pytest.approx(0.1)
    assert r["precision_ecif_mean"] == pytest.approx(0.9) and r["emi_after_ecif_max"] == -4.0
    c = s.loc[("shuffle", 0.0)]
    assert c["emi_std"] == 0.0 and c["emi_mean"] == -5.0
    assert math.isnan(c["precision_ecif_mean"]) and math.isnan(c["precision_ecif_std"])  # never defined
    assert "noise_seed_mean" not in s
    one = emi_stage.seed_summary(_models().query("noise_seed == 1")).set_index(["kind", "rate"])
    assert one.loc[("shuffle", 0.2), "emi_std"] == 0.0 and one.loc[("shuffle", 0.2), "n_seeds"] == 1


def test_summary_view_shows_the_seed_statistics_of_the_shown_columns() -> None:
    from ecif.kit import emi_stage

    view = emi_stage.summary_view(emi_stage.seed_summary(_models()))
    assert list(view.index.names) == ["kind", "rate"]
    assert view.columns[0] == "n_seeds" and "emi_std" in view and "precision_ecif_mean" in view
    assert not any(c.startswith("noise_seed") for c in view)  # only the shown measurements
    assert view.loc[("shuffle", 0.2), "emi_mean"] == pytest.approx(-8.0)


def _corr():
    import pandas as pd

    return pd.DataFrame([{"x": "emid", "y": "acc_drop", "seed": "mean", "pearson": 0.8, "pearson_lo": 0.64,
                          "pearson_hi": 0.94, "spearman": 0.89, "spearman_lo": 0.72, "spearman_hi": 0.96},
                         {"x": "emid", "y": "bound", "seed": "mean", "pearson": 0.3, "pearson_lo": -0.2,
                          "pearson_hi": 0.6, "spearman": 0.25, "spearman_lo": -0.1, "spearman_hi": 0.5},
                         {"x": "emid", "y": "bound", "seed": "0", "pearson": 0.9, "pearson_lo": 0.8,
                          "pearson_hi": 0.95, "spearman": 0.9, "spearman_lo": 0.8, "spearman_hi": 0.95}])


def test_findings_are_computed_from_the_numbers() -> None:
    import pandas as pd

    from ecif.kit import emi_stage

    summary = emi_stage.seed_summary(_models())
    means = pd.DataFrame({"scenario": ["noise3", "typo3", "retemplate1", "blur1"],
                          "modality": ["visual", "text", "text", "visual"], "emid": [75.0, 77.0, -6.0, 1.0],
                          "acc_drop": [0.48, 0.5, 0.1, 0.0], "jsd_v": [0.013, 0.0, 0.0, 0.001],
                          "jsd_t": [0.0, 0.2, 0.09, 0.0], "bound": [0.5, 0.9, 0.8, 0.3]})
    marg = emi_stage.seed_summary(pd.DataFrame(
        [{"kind": "shuffle", "rate": 0.2, "noise_seed": sd, "jsd_images": 0.0, "jsd_captions": 0.0,
          "dmi_clean": 4.8, "dmi_corrupted": 4.4, "mi_clean": 270.0, "mi_corrupted": 150.0} for sd in (0, 1)]))
    relabel = {"accuracy": 0.61, "dmi_emi": 0.0, "emi_refit": 3.1, "emi_shared": -92.7, "mi_reference_refit": 472.0}
    lines = emi_stage.findings(_corr(), summary, means, marg, relabel)
    text = "\n".join(lines)
    assert ("A. EMID vs accuracy drop across scenarios: Spearman 0.89 [0.72, 0.96], "
            "Pearson 0.80 [0.64, 0.94] (interval above 0).") in lines
    assert "EMID vs bound across scenarios: Spearman 0.25 [-0.10, 0.50]" in text
    assert "(interval includes 0)" in text
    assert sum(line.startswith("A. EMID vs bound") for line in lines) == 1  # per-seed rows are not used
    assert "A. largest EMID: typo3 77.0 (accuracy drop 0.50), noise3 75.0 (accuracy drop 0.48)" in text
    assert "J_v at most 0.013" in text and "worst visual shift (noise3)" in text
    # EMI -8.0 ± 2.0 at 20 % vs -5.0 ± 0.0: |diff| 3 > 2, so not within one std
    assert ("B. shuffle: EMI at 20 % is -8.0 ± 2.0 vs -5.0 ± 0.0 at 0 % (mean ± std over 3 noise seeds); "
            "rates whose EMI is within one std of 0 %: none.") in lines
    assert "accuracy 0.600 ± 0.000 at 0 % and 0.400 ± 0.100 at 20 %" in text
    assert "ECIF precision@k 0.90 to 0.90 across rates (seed means; random 0.20 to 0.20)" in text
    # after ECIF removal: -5.0 ± 1.0, back within one std of the clean -5.0
    assert "after removing ecif -5.0 ± 1.0; back within one std of the clean fit: ecif." in text
    assert "caption JSD clean vs corrupted at most 0, image JSD at most 0" in text
    assert "discrete MI 4.80 -> 4.40, CLUB refitted 270 -> 150 at 20 %" in text
    assert "discrete EMI 0.000, CLUB EMI with refitted terms +3.1 (0.7 % of the reference MI 472)" in text
    # the same call on other numbers gives other sentences: nothing is fixed text
    other = _models().assign(emi=lambda d: d["emi"].where(d["rate"] == 0, d["noise_seed"].map({0: -4.0, 1: -5.5,
                                                                                             2: -7.0})))
    assert "within one std of 0 %: 20 %." in "\n".join(emi_stage.findings(_corr(), emi_stage.seed_summary(other)))
    one = "\n".join(emi_stage.findings(_corr(), emi_stage.seed_summary(_models().query("noise_seed == 0"))))
    assert "(mean ± std over 1 noise seed); one noise seed: no spread" in one


def test_metrics_shaping_has_no_dotted_keys() -> None:
    import pandas as pd

    from ecif.kit import emi_stage

    assert emi_stage.rate_key("shuffle", 0.05) == "shuffle_r05"
    assert emi_stage.rate_key("systematic_swap", 0.3) == "systematic_swap_r30"
    grid = pd.DataFrame({"scenario": ["a", "b", "c"], "seed": [0, 0, 0]})
    marg = emi_stage.seed_summary(pd.DataFrame([{"kind": "shuffle", "rate": 0.2, "noise_seed": 0,
                                                 "jsd_captions": 0.0}]))
    m = emi_stage.metrics(grid, _corr(), emi_stage.seed_summary(_models()), marg, {"dmi_emi": 0.0})
    flat = _flat(m)
    assert flat["shift.corr_emid_bound.spearman"] == 0.25 and flat["shift.n_scenarios"] == 3
    assert flat["misalignment.shuffle_r20.emi_mean"] == -8.0 and flat["misalignment.shuffle_r20.emi_std"] == 2.0
    assert flat["misalignment.shuffle_r20.precision_ecif_mean"] == pytest.approx(0.9)
    assert flat["misalignment.shuffle_r20.n_seeds"] == 3
    assert "misalignment.shuffle_r20.emi_min" not in flat  # min/max: tables only
    assert "misalignment.shuffle_r00.precision_ecif_mean" not in flat  # nan dropped
    assert flat["marginals.shuffle_r20.jsd_captions_mean"] == 0.0
    assert not any(k.startswith("time") for k in flat)
