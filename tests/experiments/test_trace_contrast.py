"""trace_contrast: the per-layer contrast of two models' traces is the difference of their mean
NIE per layer (a hand-made study where one layer differs; identical models give exactly 0 on a
real trace), the largest difference names that layer, unknown models are refused; the swap
retrieval probabilities are a softmax over the slot's captions (true + all swapped = 1)."""

import numpy as np
import pandas as pd
import pytest

from ecif.data import encoders as E
from ecif.data.embedded import SHAPE_VALUES, shapes
from ecif.experiments.trace_contrast import largest_difference, layer_contrast, swap_retrieval
from ecif.experiments.tracing_study import tracing_study


def _hand_study(bump_layer: int, bump: float) -> dict:
    """Models a and b, 3 layers x 4 tokens, one tower and kind; b = a + ``bump`` at one token of
    ``bump_layer``; a token of layer 0 is NaN (padding) in both."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=(3, 4))
    base[0, 3] = np.nan
    rows = []
    for model in ("a", "b"):
        heat = base.copy()
        if model == "b":
            heat[bump_layer, 1] += bump
        for layer in range(3):
            for t in range(4):
                rows.append((model, "text", "mlp", "layer", layer, t, "x", heat[layer, t]))
                rows.append((model, "text", "mlp", "window3", layer, t, "x", 0.0))
    return {"tokens": pd.DataFrame(rows, columns=["model", "tower", "kind", "restore", "layer", "token", "role", "nie"]),
            "base": base}


def test_contrast_is_the_per_layer_mean_difference():
    study = _hand_study(2, 0.8)
    c = layer_contrast(study, reference="a", other="b")
    assert list(c["layer"]) == [0, 1, 2]
    np.testing.assert_allclose(c["nie_mean_a"], np.nanmean(study["base"], axis=1))
    np.testing.assert_allclose(c["diff"], [0.0, 0.0, 0.8 / 4], atol=1e-15)
    assert float(c["diff_max"].iloc[2]) >= 0.0
    peak = largest_difference(c)
    assert (int(peak["layer"].iloc[0]), peak["kind"].iloc[0]) == (2, "mlp")
    np.testing.assert_allclose(peak["diff"].iloc[0], 0.2)
    # the reverse contrast flips the sign, the window restorations do not differ
    np.testing.assert_allclose(layer_contrast(study, reference="b", other="a")["diff"], -c["diff"])
    assert (layer_contrast(study, "a", "b", restore="window3")["diff"] == 0).all()


def test_towers_of_different_depth_keep_their_own_layers():
    """A second tower with one layer: the contrast lists 3 text layers and 1 image layer, no NaN rows."""
    study = _hand_study(2, 0.8)
    tokens = study["tokens"]
    image = tokens[tokens["layer"] == 0].assign(tower="image", nie=0.5)
    study = {**study, "tokens": pd.concat([tokens, image], ignore_index=True)}
    c = layer_contrast(study, reference="a", other="b")
    assert list(zip(c["tower"], c["layer"])) == [("text", 0), ("text", 1), ("text", 2), ("image", 0)]
    assert not c[["nie_mean_a", "nie_mean_b", "diff"]].isna().any().any()


def test_unknown_models_and_restorations_are_refused():
    study = _hand_study(1, 0.1)
    with pytest.raises(ValueError, match="not in the study"):
        layer_contrast(study, reference="clean", other="b")
    with pytest.raises(ValueError, match="restore"):
        layer_contrast(study, "a", "b", restore="window2")


@pytest.fixture(scope="module")
def shapes_model(shapes_encoder_dir):
    model, tok, _ = E.load_encoder("embedded", shapes_encoder_dir)
    split = shapes(sizes={"pretrain": 1, "train": 1, "val": 1, "test": 60})["test"]
    return model, tok, split


def test_identical_models_differ_by_exactly_zero(shapes_model):
    model, tok, split = shapes_model
    study = tracing_study({"clean": model, "swap": model}, tok, split, attribute="color", n_examples=6,
                          towers=("image",), window=1)
    c = layer_contrast(study)
    assert c["diff"].notna().any() and (c["diff"].dropna() == 0.0).all()
    assert set(c.columns) >= {"nie_mean_clean", "nie_mean_swap", "diff", "diff_max"}


def test_swap_retrieval_is_a_softmax_over_the_slot(shapes_model):
    model, tok, split = shapes_model
    values = SHAPE_VALUES["color"]
    rules = [("color", "red", v) for v in values[1:]]
    r = swap_retrieval({"m": model}, tok, split, rules, n_examples=5)
    assert len(r) == len(rules) and (r["n"] == r["n"].iloc[0]).all()
    assert np.allclose(r["p_true"], r["p_true"].iloc[0])  # the same images and captions for every rule
    np.testing.assert_allclose(r["p_true"].iloc[0] + r["p_swapped"].sum(), 1.0, rtol=1e-9)
    assert 0.0 <= r["top_swapped"].sum() <= 1.0 + 1e-12
