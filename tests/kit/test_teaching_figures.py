"""ecif.kit.teaching_figures: every figure of notebook 00 has titles, axis names and one colour
per method; the record holds the numbers and the kernel's folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from ecif.kit import teaching_figures as F  # noqa: E402


def _labelled(fig) -> None:
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax


def test_figures_have_titles_axis_names_and_colours() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=20)
    flipped = np.zeros(20, bool)
    flipped[:3] = True
    _labelled(F.toy_scatter({"actual": a, "predicted": a + 0.01, "flipped": flipped, "pearson": 0.999}))
    rows = [{"lam": v, "pearson": 0.9, "spearman": 0.8, "slope": 0.7} for v in (1.0, 0.01)]
    damp = [{"lam": 0.01, "damping": v, "pearson": 0.9, "spearman": 0.8, "slope": 0.7} for v in (0.0, 0.1)]
    fig = F.sweep_figure(rows, damp)
    _labelled(fig)
    assert "0.01" in fig.axes[1].get_title()
    S = rng.normal(size=(5, 5))
    P = np.exp(S) / np.exp(S).sum(1, keepdims=True)
    Q = np.exp(S) / np.exp(S).sum(0, keepdims=True)
    roles = {"S": S, "P": P, "Q": Q, "pairs": np.arange(5), "misaligned": np.zeros(5, bool),
             "neg": np.ones(5)}
    _labelled(F.roles_figure(roles))
    table = pd.DataFrame({"actual": a, "misaligned": flipped, "positive": a * 0.5, "ecif": a})
    fig = F.contrastive_scatter(table)
    _labelled(fig)
    colours = {tuple(c.get_facecolor()[0]) for c in fig.axes[0].collections}
    assert len(colours) == 2  # one per method
    assert F.METHOD_COLORS["ecif"] != F.METHOD_COLORS["positive"]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_nonconvex_figure_marks_the_saddle_and_the_positive_definite_dampings() -> None:
    a = np.linspace(-0.02, 0.0, 12)
    lam_rows = [{"lam": 1e-3, "min_eig": -5e-3, "pearson": 0.74}, {"lam": 1e-2, "min_eig": 2e-3, "pearson": 0.999}]
    damp = [{"damping": v, "min_eig": v - 5e-3, "pearson": p, "spearman": p, "slope": 0.01}
            for v, p in ((0.0, 0.74), (7.5e-3, 0.64), (0.1, 0.55))]
    study = {"lam_rows": lam_rows, "damping_rows": damp, "scatter": {1e-3: (a * 0.1, a), 1e-2: (a, a)}}
    fig = F.nonconvex_figure(study)
    _labelled(fig)
    left, right = fig.axes
    assert len(left.collections) == 2 and "saddle" in left.get_legend().get_texts()[1].get_text()
    assert any(line.get_xdata()[0] == pytest.approx(5e-3) for line in right.lines)  # mu = -min_eig
    import matplotlib.pyplot as plt

    plt.close("all")


def test_record(tmp_path) -> None:
    assert F.record("", x=1.0) is None
    path = F.record(tmp_path / "r", toy_pearson=np.float64(0.995), rows=[{"a": 1}])
    data = json.loads(path.read_text())
    assert data["toy_pearson"] == 0.995 and data["rows"] == [{"a": 1}] and data["cwd"]
