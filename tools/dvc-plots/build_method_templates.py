"""Write the DVC plot templates that colour each method as the notebooks do.

DVC's built-in ``linear`` and ``scatter`` templates colour the lines by revision and tell the
methods apart only by dash pattern (7 patterns, so ``cosine`` and ``tracin`` came out as the same
solid purple line). These two templates colour by method instead, with the fixed mapping
:data:`ecif.kit.plotting.METHOD_COLOURS` (revisions, when ``dvc plots diff`` compares several,
differ by dash pattern or point shape):

* ``methods_linear.json``: one line per method (precision@k, recall@k);
* ``methods_scatter.json``: one point colour per influence variant, plus the identity line
  ``y = x`` over the range of ``x`` (prediction against truth: on the line = exact);
* ``methods_bar.json``: horizontal bars, one per row of a table whose y column names the method
  (the peers' agreement with retraining), each bar in its method's colour.

``dvc.yaml`` names them in its ``plots:`` section; ``tests/kit/test_plots_template.py`` checks
that the committed files equal what this script writes. Regenerate after changing the colours::

    python tools/dvc-plots/build_method_templates.py
"""

from __future__ import annotations

import json
from pathlib import Path

from ecif.experiments.detection import DEFAULT_METHODS
from ecif.kit.plotting import METHOD_COLOURS

HERE = Path(__file__).resolve().parent
X, Y = "<DVC_METRIC_X>", "<DVC_METRIC_Y>"
X_LABEL, Y_LABEL = "<DVC_METRIC_X_LABEL>", "<DVC_METRIC_Y_LABEL>"
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
ZOOM = {"name": "grid", "select": "interval", "bind": "scales"}


#: The methods each template knows (its legend): the detection methods, the influence variants.
LINEAR_METHODS = list(DEFAULT_METHODS)
SCATTER_METHODS = ["ecif", "newton", "positive", "negative"]
#: The methods a bar chart may name: every method with a colour (the kit's variants and the peers).
BAR_METHODS = list(METHOD_COLOURS)


def _colour(methods, field: str = "field") -> dict:
    """Colour by ``field``, fixed per method: by default the y column's name (DVC's long format:
    column ``field``); for a bar chart, the y column itself, which holds the method names."""
    return {"field": field, "type": "nominal", "title": "method",
            "scale": {"domain": list(methods), "range": [METHOD_COLOURS[m] for m in methods]}}


def _axes(zero: bool = True) -> dict:
    y = {"field": Y, "type": "quantitative", "title": Y_LABEL}
    if not zero:
        y["scale"] = {"zero": False}
    return {"x": {"field": X, "type": "quantitative", "title": X_LABEL}, "y": y}


def linear() -> dict:
    return {
        "$schema": SCHEMA,
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": {"text": "<DVC_METRIC_TITLE>", "anchor": "middle"},
        "width": 480,
        "height": 320,
        "params": [ZOOM],
        "mark": {"type": "line", "tooltip": {"content": "data"}},
        "encoding": {**_axes(), "color": _colour(LINEAR_METHODS),
                     "strokeDash": {"field": "rev", "type": "nominal", "title": "revision"}},
    }


def scatter() -> dict:
    identity = {  # from (min x, min x) to (max x, max x)
        "mark": {"type": "rule", "color": "#7f7f7f", "strokeDash": [6, 4]},
        "encoding": {
            "x": {"aggregate": "min", "field": X, "type": "quantitative", "title": X_LABEL},
            "y": {"aggregate": "min", "field": X, "type": "quantitative", "title": Y_LABEL},
            "x2": {"aggregate": "max", "field": X},
            "y2": {"aggregate": "max", "field": X},
        },
    }
    points = {
        "mark": {"type": "point", "filled": True, "opacity": 0.8, "tooltip": {"content": "data"}},
        "params": [ZOOM],
        "encoding": {**_axes(zero=False), "color": _colour(SCATTER_METHODS),
                     "shape": {"field": "rev", "type": "nominal", "title": "revision"}},
    }
    return {
        "$schema": SCHEMA,
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": {"text": "<DVC_METRIC_TITLE>", "subtitle": "dashed: identity y = x (exact prediction)",
                  "anchor": "middle"},
        "width": 420,
        "height": 420,
        "layer": [points, identity],
    }


def bar() -> dict:
    return {
        "$schema": SCHEMA,
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": {"text": "<DVC_METRIC_TITLE>", "anchor": "middle"},
        "width": 420,
        "height": {"step": 22},
        "mark": {"type": "bar", "tooltip": {"content": "data"}},
        "encoding": {
            "x": {"field": X, "type": "quantitative", "title": X_LABEL},
            "y": {"field": Y, "type": "nominal", "title": Y_LABEL, "sort": "-x"},
            "yOffset": {"field": "rev", "sort": []},
            "color": {**_colour(BAR_METHODS, field=Y), "legend": None},  # the y axis names each bar
        },
    }


TEMPLATES = {"methods_linear.json": linear, "methods_scatter.json": scatter, "methods_bar.json": bar}


def render(name: str) -> str:
    return json.dumps(TEMPLATES[name](), indent=2) + "\n"


def main() -> None:
    for name in TEMPLATES:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
