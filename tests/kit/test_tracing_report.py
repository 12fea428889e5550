"""The tracing stage's glue on hand-made traces: metrics, the edit layer, findings, the repair sentences."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ecif.kit import tracing_report as R  # noqa: E402


def _study():
    rows, roles = [], []
    for tower, kinds in (("text", ("attn", "mlp")), ("image", ("attn", "mlp"))):
        for kind in kinds:
            for restore in ("layer", "window3"):
                for layer in range(3):
                    for token in range(4):
                        nie = 0.01 * layer
                        if (tower, kind, restore, layer, token) == ("text", "mlp", "layer", 0, 2):
                            nie = 0.15
                        if (tower, kind, restore, layer, token) == ("text", "mlp", "window3", 1, 2):
                            nie = 0.40
                        if (tower, kind, restore, layer, token) == ("image", "attn", "layer", 2, 0):
                            nie = 0.90
                        rows.append((tower, kind, restore, layer, token, "constraint" if token == 2 else "x", nie))
                    roles.append((tower, kind, restore, layer, "constraint",
                                  [r[-1] for r in rows if r[:4] == (tower, kind, restore, layer) and r[4] == 2][0]))
    tokens = pd.DataFrame(rows, columns=["tower", "kind", "restore", "layer", "token", "role", "nie"]).assign(model="m")
    by_role = pd.DataFrame(roles, columns=["tower", "kind", "restore", "layer", "role", "nie"]).assign(model="m")
    examples = pd.DataFrame([{"model": "m", "tower": "text", "n": 8, "n_flipped": 6, "p_clean": 0.9, "p_corrupt": 0.1},
                             {"model": "m", "tower": "image", "n": 8, "n_flipped": 0, "p_clean": 0.5, "p_corrupt": 0.5}])
    return {"tokens": tokens, "roles": by_role, "examples": examples, "traces": {}}


def test_metrics_peaks_and_edit_layer():
    s = _study()
    m = R.metrics({"shape": s})["tracing"]["shape"]
    assert m["text"]["nie_max_mlp"] == 0.15 and m["text"]["peak_layer_mlp"] == 0  # single layers only
    assert m["image"]["nie_max_attn"] == 0.90 and m["image"]["peak_layer_attn"] == 2
    assert m["text"]["n_flipped"] == 6 and m["image"]["p_corrupt"] == 0.5
    assert R.edit_layer(s) == 1  # the window's centre beats the single-layer peak
    s["roles"] = s["roles"][s["roles"]["restore"] == "layer"]
    assert R.edit_layer(s) == 0
    s["roles"] = s["roles"][s["roles"]["tower"] == "image"]
    with pytest.raises(ValueError, match="no text-tower MLP trace"):
        R.edit_layer(s)


def test_findings_say_where_and_when_nothing_flips():
    text = R.findings({"shape": _study()})
    assert text[0].startswith("shape, text tower: the corruption flips 6 of 8")
    assert "mlp output in a window of layers (window3) centred on layer 1, token 2 (constraint): NIE 0.40" in text[0]
    assert "best single module at one layer and token: 0.15 (the constraint is spread" in text[0]
    assert text[1] == "shape, image tower: the corruption flips no retrieval; nothing to trace."


def test_repair_findings_read_the_summary():
    metrics = ["efficacy", "generalisation", "unrelated_drift", "zero_shot"]
    vals = {"none": [0.6, 0.6, 0.0, 0.40], "edit": [0.9, 0.8, 0.001, 0.42], "ecif_top_k": [0.65, 0.7, 0.05, 0.43],
            "oracle": [0.7, 0.8, 0.08, 0.47], "finetune": [0.6, 0.68, 0.03, 0.42]}
    cols = pd.MultiIndex.from_tuples([(m, s) for m in metrics for s in ("mean", "std")])
    summary = pd.DataFrame([[x for v in vals[r] for x in (v, np.nan)] for r in vals], index=list(vals), columns=cols)
    out = R.repair_findings(summary, "triangle", 3)
    assert out[0].startswith("Captions naming 'triangle': accuracy 0.600 unrepaired; best repair edit (0.900")
    assert "oracle 0.700 (drift 0.0800, zero-shot 0.470)" in out[1]
    assert out[2].startswith("Overall zero-shot test accuracy is best after oracle (0.470)")


@pytest.mark.slow
def test_the_stage_runs_in_the_tiny_pipeline(smoke_run):
    import json

    m = json.loads((smoke_run / "metrics" / "tracing.json").read_text())
    assert set(m["tracing"]) == {"color", "shape"} and set(m["tracing"]["color"]) == {"text", "image"}
    assert set(m["repair"]) == {"none", "edit", "ecif_top_k", "oracle", "finetune"}
    assert 0 <= m["edit_layer"] < 6  # MiniLM's six layers
    table = pd.read_csv(smoke_run / "plots" / "repair.csv")
    assert set(table["noise_seed"]) == {0} and "seconds" not in set(table["metric"])


def _block():
    """A hand-made block study: base, clean, swap; the swap fit differs from the clean one at
    text layer 5 (mlp) and image layer 1 (attn), the adapted layers."""
    rows = []
    for model in ("base", "clean", "swap"):
        for tower, n_layers in (("text", 6), ("image", 2)):
            for kind in ("attn", "mlp"):
                for layer in range(n_layers):
                    for token in range(3):
                        nie = 0.1 * layer / n_layers
                        if model == "swap" and (tower, kind, layer) in (("text", "mlp", 5), ("image", "attn", 1)):
                            nie += 0.3 if tower == "text" else -0.6
                        rows.append((model, tower, kind, "layer", layer, token, "x", nie))
    tokens = pd.DataFrame(rows, columns=["model", "tower", "kind", "restore", "layer", "token", "role", "nie"])
    from ecif.experiments.trace_contrast import layer_contrast

    retrieval = pd.DataFrame([{"model": m, "attribute": "color", "source": "red", "target": "blue", "n": 5,
                               "p_true": pt, "p_swapped": ps, "top_swapped": ts}
                              for m, pt, ps, ts in (("base", 0.9, 0.02, 0.0), ("clean", 0.95, 0.01, 0.0),
                                                    ("swap", 0.3, 0.6, 0.8))])
    return {"tokens": tokens, "contrast": layer_contrast({"tokens": tokens}), "retrieval": retrieval,
            "rules": [("color", "red", "blue")], "attribute": "color", "rate": 0.3,
            "adapted": {"text": [5], "image": [1]}, "fits": {"clean": {"fit_grad_norm": 1e-10},
                                                             "swap": {"fit_grad_norm": 2e-10}},
            "fit_seconds": 12.5, "trace_seconds": 3.25}


def test_block_metrics_findings_and_figure():
    b = _block()
    m = R.metrics({}, b)["tracing"]["block"]
    assert m["text"]["mlp"]["diff_layer"] == 5 and m["text"]["mlp"]["diff"] == pytest.approx(0.3)
    assert m["image"]["attn"]["diff_layer"] == 1 and m["image"]["attn"]["diff"] == pytest.approx(-0.6)
    assert m["text"]["attn"]["diff_L3"] == 0.0 and m["text"]["adapted_layers"] == "5"
    assert m["retrieval"]["swap"]["p_swapped"] == 0.6 and m["rules"] == "color: red -> blue"
    assert R.metrics({}, None) == {"tracing": {}}
    t = R.times(pd.Series({"edit": 1.234}), b)
    assert t == {"edit_s": 1.23, "block_fits_s": 12.5, "block_traces_s": 3.25}
    lines = R.block_findings(b)
    assert "0.600" in lines[0] and "80%" in lines[0]
    assert "text tower" in lines[1] and "layer 5" in lines[1] and "+0.300" in lines[1] and "adapted block" in lines[1]
    assert "image tower" in lines[2] and "-0.600" in lines[2]
    assert "switched off" in R.block_findings(None)[0]
    fig = R.block_figure(b)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "text tower" and len(fig.axes[0].lines) == 6
    assert "switched off" in R.block_figure(None).axes[0].texts[0].get_text()
