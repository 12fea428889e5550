"""tracing_stage: block-mode fits only (head-mode fits have no blocks to trace), refused before
anything is loaded."""

import pytest

from ecif.kit.problem import FitSettings
from ecif.kit.tracing_stage import TRACING_SETTINGS, block_swap_models


def test_head_mode_is_refused():
    with pytest.raises(ValueError, match="blocks"):
        block_swap_models("shapes", "no-data", "no-encoder", settings=FitSettings(mode="head"))
    assert TRACING_SETTINGS.mode == "blocks" and TRACING_SETTINGS.blocks == 1


@pytest.mark.slow
def test_block_study_wires_fits_traces_contrast_and_report(monkeypatch, shapes_encoder_dir, tmp_path):
    """block_study on two identical "fits" (the frozen encoder, stubbed in for the block fits):
    the contrast is exactly 0, the retrieval and adapted layers are there, and the report reads
    the result (the real fits are minutes; their numbers are in the README)."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    from ecif.data import encoders as E
    from ecif.kit import tracing_report as R
    from ecif.kit import tracing_stage as S

    root = Path(__file__).resolve().parents[2] / "data"
    if not (root / "shapes").is_dir():
        from ecif.data.storage import write_embedded

        root = tmp_path / "data"
        write_embedded(root)
    model, tok, _ = E.load_encoder("embedded", shapes_encoder_dir)
    stub = {"models": {"clean": model, "swap": model}, "tokenizer": tok, "rules": [("color", "red", "blue")],
            "fits": {"clean": {"fit_grad_norm": 1e-10}, "swap": {"fit_grad_norm": 1e-10}}, "seconds": 1.5}
    monkeypatch.setattr(S, "block_swap_models", lambda *a, **k: stub)
    out = S.block_study("shapes", root, shapes_encoder_dir, attribute="color", n_examples=2)
    assert set(out["examples"]["model"]) == {"base", "clean", "swap"}
    assert set(out["tokens"]["restore"]) == {"layer"}  # no window traces
    c = out["contrast"]
    assert set(c["tower"]) == {"text", "image"} and (c["diff"].dropna() == 0.0).all() and c["diff"].notna().any()
    assert out["adapted"] == {"text": [5], "image": [1]} and list(out["retrieval"]["model"]) == ["base", "clean", "swap"]
    m = R.metrics({}, out)["tracing"]["block"]
    assert m["text"]["adapted_layers"] == "5" and m["retrieval"]["swap"] == m["retrieval"]["clean"]
    assert len(R.block_findings(out)) == 3 and R.times({}, out)["block_fits_s"] == 1.5
    R.block_figure(out)
