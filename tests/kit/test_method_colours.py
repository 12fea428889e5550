"""Readable figures: one colour per method everywhere (notebook figures and the DVC plots page),
identity lines on prediction-vs-truth scatters, titles and axis names on every figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from ecif.experiments.detection import METHODS  # noqa: E402
from ecif.kit import plotting  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "dvc-plots"


def _builder():
    spec = importlib.util.spec_from_file_location("build_method_templates", TOOLS / "build_method_templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_has_its_own_colour() -> None:
    colours = plotting.METHOD_COLOURS
    assert set(METHODS) <= set(colours), set(METHODS) - set(colours)
    assert len(set(colours.values())) == len(colours), "two methods share a colour"
    for name, colour in colours.items():
        assert mcolors.is_color_like(colour) and colour.startswith("#"), name  # vega reads hex
    assert plotting.VARIANT_COLORS == {v: colours[v] for v in ("ecif", "newton", "positive", "negative")}
    assert plotting.method_colour("random_3") == colours["random"]


def test_dvc_templates_are_built_from_the_mapping() -> None:
    builder = _builder()
    for name in builder.TEMPLATES:
        assert (TOOLS / name).read_text(encoding="utf-8") == builder.render(name), (
            f"{name} is stale: run python tools/dvc-plots/build_method_templates.py")


def test_dvc_plots_colour_each_method() -> None:
    """Every plot of dvc.yaml that draws methods uses a template with a fixed colour per method,
    the colours of the notebooks, one per method."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    checked = 0
    for entry in plots:
        if not isinstance(entry, dict):
            continue
        (name, props), = entry.items()
        columns = [([cols] if isinstance(cols, str) else cols) for cols in props.get("y", {}).values()]
        fields = [f for cols in columns for f in cols]
        if fields == ["method"]:  # a table with one row per method (a bar chart): the names are the rows
            (path,) = props["y"]
            fields = list(pd.read_csv(ROOT / path)["method"])
            template = json.loads((ROOT / props["template"]).read_text())
            assert template["encoding"]["color"]["field"] == "<DVC_METRIC_Y>", name
        if not set(fields) & set(METHODS):
            continue
        template = json.loads((ROOT / props["template"]).read_text())
        layers = template.get("layer", [template])
        scales = [lay["encoding"]["color"]["scale"] for lay in layers if "color" in lay.get("encoding", {})]
        assert scales, f"{name}: no colour encoding"
        for scale in scales:
            assert set(fields) <= set(scale["domain"]), name
            assert scale["range"] == [plotting.METHOD_COLOURS[m] for m in scale["domain"]], name
            assert len(set(scale["range"])) == len(scale["range"]), name
        if props["template"].endswith("scatter.json"):  # prediction vs truth: identity line
            assert any(lay["mark"]["type"] == "rule" for lay in layers), name
        checked += 1
    assert checked >= 4


def _labelled(fig) -> None:
    assert fig._suptitle is not None and fig._suptitle.get_text(), "figure without a title"
    for ax in fig.axes:
        if not ax.axison or not ax.has_data():
            continue
        assert ax.get_title() or ax.get_title(loc="left"), ax
        assert ax.get_xlabel(), ax


def _line_colours(ax) -> dict:
    return {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax.get_lines()}


def test_detection_figures_use_the_mapping_and_are_labelled() -> None:
    methods = list(METHODS)
    ks = np.arange(1, 11)
    curve = pd.DataFrame({"k": ks, **{m: np.linspace(0, 1, 10) for m in methods}})
    fig = plotting.detection_curves(curve, curve, n_injected=4)
    _labelled(fig)
    for ax in fig.axes:
        assert ax.get_ylabel()
        colours = _line_colours(ax)
        assert all(colours[m] == plotting.METHOD_COLOURS[m] for m in methods)
    long = pd.DataFrame([{"kind": k, "x": x, "y": x, "method": m} for k in ("a", "b") for x in (1, 2) for m in methods])
    fig = plotting.curves_by_panel(long, "kind", "x", "y", "method", xlabel="k", ylabel="precision")
    _labelled(fig)
    assert _line_colours(fig.axes[0])["tracin"] != _line_colours(fig.axes[0])["cosine"]


def test_loo_scatter_has_identity_line_and_titles() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=12)
    table = pd.DataFrame({"actual": a, "misaligned": [True] * 3 + [False] * 9,
                          **{v: a + 0.01 * rng.normal(size=12) for v in ("ecif", "newton", "positive", "negative")}})
    fig = plotting.loo_scatter(table)
    _labelled(fig)
    for ax in fig.axes:
        identity = [ln for ln in ax.get_lines() if "identity" in ln.get_label()]
        assert identity and np.allclose(*identity[0].get_data())


def test_trace_gallery_has_column_headers() -> None:
    images = np.zeros((6, 8, 8))
    table = pd.DataFrame({"item": [0, 0, 1, 1], "rank": [0, 1, 0, 1], "pair": [2, 3, 4, 5], "score": [1.0] * 4})
    fig = plotting.trace_gallery(images, {0: "test 0", 1: "test 1"}, images, [f"c{i}" for i in range(6)], table,
                                 mask=np.array([0, 0, 1, 0, 0, 0], bool))
    assert fig._suptitle.get_text()
    top = fig.axes[:3]  # the first row of axes: the column headers
    headers = [t.get_text() for ax in top for t in ax.texts]
    assert len(headers) == 3 and "test item" in headers[0] and "#1" in headers[1], headers


@pytest.fixture(autouse=True)
def _close():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_pair_gallery_and_loss_curve_are_titled() -> None:
    images = np.zeros((3, 8, 8))
    fig = plotting.pair_gallery(images, ["a", "b", "x"], ["a", "b", "c"], [0, 1, 2], ncols=3)
    assert fig._suptitle.get_text()
    fig = plotting.loss_curve([3.0, 2.0, 1.5], title="encoder training")
    assert fig.axes[0].get_title() and fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
