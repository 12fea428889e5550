"""The check cells of the exercises of notebooks 12 to 14 (ecif.kit.exercises): each answer is
computed from the inputs, on hand-made inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecif.kit import exercises as X


def test_detect_vs_agree_names_the_best_method_of_each_measure():
    stats = {"ecif": {"auroc": 0.90, "pearson": 0.99, "pearson_clean": 0.98},
             "cosine": {"auroc": 0.97, "pearson": 0.20, "pearson_clean": 0.10}}
    (line,) = X.exercise_detect_vs_agree(stats)
    assert "(AUROC): cosine (0.970)" in line and "(Pearson): ecif (0.990)" in line and "different methods" in line
    stats["ecif"]["auroc"] = 0.99
    assert "the same method" in X.exercise_detect_vs_agree(stats)[0]


def test_peer_matches_positive_reports_the_relative_gap():
    pos = np.array([1.0, -2.0, 0.5, 4.0])
    (line,) = X.exercise_peer_matches_positive({"positive": pos, "dattri_cg": pos + np.array([0, 0, 0, 0.04])})
    assert "largest difference 1.00e-02 of the largest score" in line
    assert "did not run" in X.exercise_peer_matches_positive({"positive": pos})[0]


def _loo() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for batching, noise in (("random", 0.0), ("hard_negative", 1.0)):
        actual = rng.normal(size=12)
        rows.append(pd.DataFrame({"batching": batching, "pair": np.arange(12), "misaligned": np.arange(12) < 4,
                                  "actual": actual, "ecif": actual + noise * rng.normal(size=12),
                                  "positive": 2.0 + 0 * actual, "negative": 0.0 * actual}))
    out = pd.concat(rows, ignore_index=True)
    out["positive"] = np.where(out["misaligned"], 2.0, 1.0)
    out["negative"] = np.where(out["misaligned"], 1.0, 0.25) * np.where(out["batching"] == "random", 1.0, 2.0)
    return out


def test_clean_pairs_by_batching_is_the_clean_only_check_per_batching():
    lines = X.exercise_clean_pairs_by_batching(_loo(), variants=("ecif",))
    assert len(lines) == 4 and lines[0].startswith("random, ecif: all")
    assert "clean        8 pairs: Spearman 1.000" in lines[1]  # ecif = actual under random batching
    assert lines[2].startswith("hard_negative, ecif: all") and "Spearman 1.000" not in lines[3]


def test_negative_share_by_group_is_the_norm_ratio():
    lines = X.exercise_negative_share_by_group(_loo())
    # clean: negative 0.25 (x2 under hard negatives) against positive 1; misaligned: 1 (x2) against 2
    assert lines == ["random, misaligned pairs (4): ||IS_neg|| / ||IS_pos|| = 0.500",
                     "random, clean pairs (8): ||IS_neg|| / ||IS_pos|| = 0.250",
                     "hard_negative, misaligned pairs (4): ||IS_neg|| / ||IS_pos|| = 1.000",
                     "hard_negative, clean pairs (8): ||IS_neg|| / ||IS_pos|| = 0.500"]


def test_edit_layers_picks_the_largest_constraint_mlp_nie_per_restoration():
    roles = pd.DataFrame({"tower": "text", "kind": "mlp", "role": ["constraint"] * 4 + ["other"],
                          "restore": ["layer", "layer", "window3", "window3", "layer"],
                          "layer": [1, 4, 2, 3, 5], "nie": [0.1, 0.3, 0.5, np.nan, 0.9]})
    assert X.exercise_edit_layers({"roles": roles}) == ["layer: text layer 4 (NIE 0.300)",
                                                       "window3: text layer 2 (NIE 0.500)"]


def test_adapted_peak_says_whether_the_largest_difference_is_adapted():
    contrast = pd.DataFrame({"tower": ["text"] * 3 + ["image"] * 2, "kind": ["attn", "mlp", "attn", "attn", "mlp"],
                             "layer": [5, 4, 0, 1, 0], "diff": [0.01, 0.05, 0.0, 0.02, -0.03]})
    lines = X.exercise_adapted_peak({"contrast": contrast, "adapted": {"text": [5], "image": [1]}})
    assert lines == ["text tower: largest difference at layer 4 (+0.0500), a frozen layer (adapted: [5]).",
                     "image tower: largest difference at layer 0 (-0.0300), a frozen layer (adapted: [1])."]
    contrast.loc[0, "diff"] = 0.08  # now the adapted text layer differs most
    text = X.exercise_adapted_peak({"contrast": contrast, "adapted": {"text": [5], "image": [1]}})[0]
    assert text == "text tower: largest difference at layer 5 (+0.0800), an adapted layer (adapted: [5])."
    assert "switched off" in X.exercise_adapted_peak(None)[0]
