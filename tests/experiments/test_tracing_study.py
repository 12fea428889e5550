"""tracing_study: its tables hold the traces' heatmaps (one row per model, tower, kind,
restoration, layer and token), identical models give identical rows, the per-layer summary is
consistent with them; bad arguments are refused."""


import numpy as np
import pytest

from ecif.data import encoders as E
from ecif.data.embedded import shapes
from ecif.experiments.tracing_study import tracing_study



def test_tables_hold_the_heatmaps(shapes_encoder_dir):
    model, tok, _ = E.load_encoder("embedded", shapes_encoder_dir)
    split = shapes(sizes={"pretrain": 1, "train": 1, "val": 1, "test": 8})["test"]
    out = tracing_study({"a": model, "b": model}, tok, split, attribute="color", n_examples=8, towers=("image",),
                        window=2)
    tokens, layers, ex = out["tokens"], out["layers"], out["examples"]
    # 2 models x 2 kinds x (layer, window2) x 2 layers x 17 tokens
    assert len(tokens) == 2 * 2 * 2 * 2 * 17
    tr = out["traces"][("a", "image")]
    a = tokens[(tokens.model == "a") & (tokens.kind == "attn") & (tokens.restore == "window2")]
    np.testing.assert_allclose(a["nie"].to_numpy().reshape(2, 17), tr.heatmap("attn", window=True))
    b = tokens[tokens.model == "b"]["nie"].to_numpy()
    np.testing.assert_allclose(tokens[tokens.model == "a"]["nie"].to_numpy(), b)
    assert (ex["n_flipped"] == tr.flipped.sum()).all() and tr.flipped.sum() >= 5
    assert set(out["roles"].role) == {"cls", "clean", "corrupted"}
    assert set(tokens.role) <= {"cls", "clean", "corrupted"} and tokens[tokens.token == 0].role.eq("cls").all()
    # per-layer summary: the maximum over tokens is at least the value at the class token
    assert (layers["nie_max"] >= layers["nie_last"] - 1e-12).all()
    # last layer: only the class token is pooled, so only it can restore anything
    last = tokens[(tokens.layer == 1) & (tokens.restore == "layer") & (tokens.token > 0)]
    assert float(last["nie"].abs().max()) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="towers"):
        tracing_study({"a": None}, None, None, towers=("audio",))
    with pytest.raises(ValueError, match="models"):
        tracing_study({}, None, None)
