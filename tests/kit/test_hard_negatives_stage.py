"""The hard-negative stage's glue: metrics keys, findings from the numbers, the figure."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ecif.experiments.hard_negatives import STUDY_COLUMNS  # noqa: E402
from ecif.kit import hard_negatives as H  # noqa: E402
from ecif.kit.problem import FitSettings  # noqa: E402


def _summary():
    rows = [dict(zip(STUDY_COLUMNS, ["random", 64, 7, 0.10, 0.20, 0.90, 0.85, 0.99, 0.98, 0.995, 0.99, 1.5, 1e-12, 0.1, 6.0, True, 8])),
            dict(zip(STUDY_COLUMNS, ["hard_negative", 64, 7, 0.30, 0.50, 0.70, 0.60, 0.97, 0.95, 0.98, 0.97, 1.6, 1e-12, 0.02, 7.5, True, 8]))]
    return pd.DataFrame(rows, columns=list(STUDY_COLUMNS))


def _loo():
    rng = np.random.default_rng(0)
    parts = []
    for b in ("random", "hard_negative"):
        a = rng.normal(size=8)
        parts.append(pd.DataFrame({"batching": b, "pair": np.arange(8), "misaligned": np.arange(8) < 2, "actual": a,
                                   "positive": a + 0.1, "negative": 0.1 * a, "ecif": a,
                                   "newton": a}))
    return pd.concat(parts, ignore_index=True)


def test_metrics_keys():
    m = H.metrics(_summary())["hard_negatives"]
    assert set(m) == {"random", "hard_negative"}
    assert m["hard_negative"]["neg_to_pos"] == 0.5 and m["random"]["pearson_ecif"] == 0.99
    assert set(m["random"]) == {"neg_to_pos", "pearson_positive", "spearman_positive", "pearson_ecif",
                                "spearman_ecif", "pearson_newton", "spearman_newton",
                                "within_batch_similarity"}


def test_findings_are_computed_from_the_numbers():
    mined = pd.DataFrame([{"n_train": 400, "n_hard": 8, "misaligned_share": 0.25, "met_random": 0.16,
                           "met_hard_negative": 0.7}])
    text = "\n".join(H.findings(_summary(), mined))
    assert "grows from 0.200 (random) to 0.500" in text and "factor 2.50" in text
    assert "70% of its 8 mined hard negatives" in text and "16% under random" in text
    assert "0.1000 (random), 0.0200 (hard negatives)" in text and "6.0 and 7.5" in text
    assert "even `newton`" in text  # flatter (0.02 < 0.1) and newton agrees less (0.98 < 0.995)
    assert "Pearson 0.900 -> 0.700" in text and "+0.090 under random batching, +0.270" in text


def test_figure_has_named_axes_and_one_colour_per_batching():
    fig = H.study_figure(_summary(), _loo())
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert all(x and y for x, y in labels)
    bars = fig.axes[0].patches
    assert [matplotlib.colors.to_hex(p.get_facecolor()) for p in bars] == [H.BATCHING_COLOURS["random"],
                                                                           H.BATCHING_COLOURS["hard_negative"]]


def test_block_mode_is_refused_before_any_work():
    with pytest.raises(ValueError, match="finetune.mode: head"):
        H.hard_negative_run("shapes", "data", "nowhere", settings=FitSettings(mode="blocks"))


@pytest.mark.slow
def test_the_stage_runs_in_the_tiny_pipeline(smoke_run):
    import json
    import math

    m = json.loads((smoke_run / "metrics" / "hard_negatives.json").read_text())
    assert set(m["hard_negatives"]) == {"random", "hard_negative"}
    for row in m["hard_negatives"].values():
        assert all(math.isfinite(v) for v in row.values())
    table = pd.read_csv(smoke_run / "plots" / "hard_negatives.csv")
    assert set(table["batching"]) == {"random", "hard_negative"} and len(table) == 2 * 4  # n_pairs 4 each
