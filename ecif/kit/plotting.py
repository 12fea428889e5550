"""Matplotlib figures of the pipeline notebooks (each returns a Figure; the notebook shows and
saves it). Kept here so the notebooks stay short and the figures look the same everywhere."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

#: One colour per method, the same in every figure of the notebooks and on the DVC plots page
#: (``tools/dvc-plots/methods_*.json`` carry the same mapping, checked by a test): the detection
#: methods of :data:`ecif.experiments.detection.METHODS`, the removal sets ``oracle`` / ``none``
#: of the cleaning and EMI stages. Hex strings (tab10 order), so vega reads them too.
METHOD_COLOURS = {
    "ecif": "#1f77b4",           # blue: the paper's method
    "newton": "#ff7f0e",         # orange
    "positive": "#2ca02c",       # green: the classical influence function
    "negative": "#d62728",       # red
    "self_ecif": "#17becf",      # cyan
    "self_positive": "#bcbd22",  # olive
    "tracin": "#9467bd",         # purple
    "pair_loss": "#8c564b",      # brown
    "cosine": "#e377c2",         # pink
    "random": "#7f7f7f",         # grey: the chance line (dotted)
    "oracle": "#000000",         # black: the misaligned pairs themselves
    "none": "#bdbdbd",           # light grey: nothing removed
    "clean": "#98df8a",          # light green: fitted on the true captions
    # the peers (ecif/experiments/peers.py): indigo shades for kronfluence, olive for dattri, brown for TRAK
    "kronfluence_ekfac": "#393b79",
    "kronfluence_kfac": "#6b6ecf",
    "kronfluence_identity": "#9c9ede",
    "dattri_cg": "#637939",
    "dattri_explicit": "#b5cf6b",
    "trak": "#e7ba52",               # gold: TRAK
}

#: The four influence variants (one solve): a view of :data:`METHOD_COLOURS`.
VARIANT_COLORS = {v: METHOD_COLOURS[v] for v in ("ecif", "newton", "positive", "negative")}


def method_colour(name: str, default: str = "#333333") -> str:
    """The colour of method ``name`` (:data:`METHOD_COLOURS`; ``random_3`` -> ``random``)."""
    name = str(name)
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    base = name.rsplit("_", 1)[0]
    return METHOD_COLOURS.get(base, default)


def method_style(name: str, highlight=("ecif",)) -> dict:
    """Line style of method ``name``: its colour, thick when highlighted, dotted for ``random``."""
    style = {"color": method_colour(name), "lw": 2.2 if name in highlight else 1.2}
    if name == "random":
        style.update(lw=1.0, ls=":")
    return style


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG (parent folders created); deterministic metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def _show_image(ax, image: np.ndarray) -> None:
    img = np.asarray(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def pair_gallery(
    images: np.ndarray,
    captions: list[str],
    original: list[str],
    indices,
    ncols: int = 4,
    width: int = 26,
    title: str = "Training pairs: the caption trained on (red: corrupted) and, below, the original",
):
    """Grid of image-caption pairs: the caption the model is trained on (red when it was
    corrupted) and, below it, the original caption."""
    import matplotlib.pyplot as plt

    indices = list(indices)
    nrows = max(1, int(np.ceil(len(indices) / ncols)))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 3.8 * nrows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, indices):
        ax.axis("on")
        _show_image(ax, images[k])
        changed = captions[k] != original[k]
        shown = textwrap.fill(f"train: {captions[k]}", width)
        truth = textwrap.fill(f"true: {original[k]}", width)
        ax.set_title(shown, fontsize=8, color="tab:red" if changed else "black")
        ax.set_xlabel(truth, fontsize=7, color="0.35")
        ax.set_ylabel(f"pair {k}", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curve(values, xlabel: str = "epoch", ylabel: str = "loss", title: str = ""):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(values) + 1), values, marker=".")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loo_scatter(table, variants=("ecif", "newton", "positive", "negative"), stats=None):
    """One panel per variant: predicted ``IS(k)`` against the retrained change, identity line,
    misaligned pairs marked; ``stats`` (variant -> {pearson, spearman}) goes into the titles."""
    import matplotlib.pyplot as plt

    actual = table["actual"].to_numpy()
    bad = table["misaligned"].to_numpy().astype(bool)
    fig, axes = plt.subplots(
        1, len(variants), figsize=(3.6 * len(variants), 3.6), squeeze=False
    )
    for ax, v in zip(axes[0], variants):
        pred = table[v].to_numpy()
        lo = float(min(actual.min(), pred.min()))
        hi = float(max(actual.max(), pred.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot(
            [lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--",
            label="identity y = x",
        )
        ax.scatter(
            actual[~bad], pred[~bad], s=18, color=method_colour(v), label="clean"
        )
        ax.scatter(
            actual[bad], pred[bad], s=28, marker="x", color="black", label="misaligned"
        )
        title = v
        if stats and v in stats:
            title += f"\nPearson {stats[v]['pearson']:.3f}, Spearman {stats[v]['spearman']:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("actual  L_val(θ₋ₖ) − L_val(θ̂)", fontsize=8)
        ax.ticklabel_format(style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted IS(k)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Predicted influence against the actual change after retraining without pair k "
                 "(on the dashed line: exact)")
    fig.tight_layout()
    return fig


def detection_curves(
    precision, recall, n_injected: int | None = None, highlight=("ecif",),
    title: str = "Which pairs each method flags first: misaligned pairs found among the top k",
):
    """Precision@k and recall@k against k for every method (wide DataFrames from
    :func:`ecif.experiments.detection.detection_curves`); a dashed line at k = number injected."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    methods = [c for c in precision.columns if c != "k"]
    for ax, df, name in (
        (axes[0], precision, "precision@k"),
        (axes[1], recall, "recall@k"),
    ):
        for m in methods:
            ax.plot(df["k"], df[m], label=m, **method_style(m, highlight))
        if n_injected:
            ax.axvline(n_injected, color="0.5", ls="--", lw=0.8, label="k = number injected")
        ax.set_xlabel("k (pairs flagged, most harmful first)")
        ax.set_ylabel(name)
        ax.set_title(f"{name} of misaligned-pair detection")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves_by_panel(frame, panel: str, x: str, y: str, line: str, err: str | None = None,
                    xlabel: str = "", ylabel: str = "", logx: bool = False, highlight=("ecif",),
                    title: str = ""):
    """One panel per value of column ``panel`` of the long DataFrame ``frame``, one line per
    value of ``line``: ``y`` against ``x`` (shaded ``y +- err`` when ``err`` is given).
    Used for the sweeps: precision@k per misalignment kind, agreement per damping or ``lam``."""
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(frame[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = frame[frame[panel] == p]
        for name in dict.fromkeys(sub[line]):
            d = sub[sub[line] == name].sort_values(x)
            (h,) = ax.plot(d[x], d[y], label=str(name), **method_style(str(name), highlight))
            if err is not None:
                ax.fill_between(d[x], d[y] - d[err], d[y] + d[err], color=h.get_color(), alpha=0.12, lw=0)
        if logx:
            ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_title(f"{panel} = {p}", fontsize=9)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title or f"{ylabel or y} against {xlabel or x}, one panel per {panel}")
    fig.tight_layout()
    return fig


def trace_gallery(test_images, test_titles, train_images, captions, table, mask=None, width: int = 22,
                  title: str = "Trace-back: the training pairs that most pushed each test item to its wrong label"):
    """One row per mispredicted test item: its image (title ``test_titles[item]``), then its top
    traced training pairs (``table`` from :func:`ecif.experiments.misprediction.trace_gallery`: ``item``,
    ``rank``, ``pair``, ``score``) as image + training caption, red where ``mask`` marks the
    pair as misaligned. Column headers above the first row; ``title`` above them."""
    import matplotlib.pyplot as plt

    items = list(dict.fromkeys(table["item"]))
    top = int(table["rank"].max()) + 1
    fig, axes = plt.subplots(len(items) + 1, top + 1, figsize=(2.4 * (top + 1), 0.6 + 2.9 * len(items)),
                             squeeze=False, gridspec_kw={"height_ratios": [0.2] + [1.0] * len(items)})
    headers = ["mispredicted test item\n(true / predicted)"] + [
        f"traced train pair #{j + 1}" + ("\n(strongest)" if j == 0 else "") for j in range(top)]
    for ax, text in zip(axes[0], headers):  # a row of column headers
        ax.axis("off")
        ax.text(0.5, 0.0, text, ha="center", va="bottom", fontsize=9, fontweight="bold")
    for row, z in zip(axes[1:], items):
        for ax in row:
            ax.axis("off")
        row[0].axis("on")
        _show_image(row[0], test_images[z])
        row[0].set_title(textwrap.fill(test_titles[z], width), fontsize=8, color="tab:blue")
        for _, r in table[table["item"] == z].sort_values("rank").iterrows():
            ax = row[int(r["rank"]) + 1]
            ax.axis("on")
            k = int(r["pair"])
            _show_image(ax, train_images[k])
            bad = mask is not None and bool(np.asarray(mask)[k])
            ax.set_title(textwrap.fill(("[misaligned] " if bad else "") + captions[k], width), fontsize=7,
                         color="tab:red" if bad else "black")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cleaning_curve(summary, title: str = "Test zero-shot accuracy against the share of train pairs removed"):
    """The removal-fraction curve: one line (one colour) per method of the long DataFrame
    ``summary`` (:func:`ecif.kit.reports.curve_summary`: ``fraction``, ``method``,
    ``accuracy_mean``, ``accuracy_std``); ``random`` shaded +- its std over seeds, the references
    ``none`` and ``oracle`` dashed."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(summary["method"]))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(methods), 2)))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for color, m in zip(colors, methods):
        d = summary[summary["method"] == m].sort_values("fraction")
        style = {"ls": "--", "lw": 1.4} if m in ("none", "oracle") else {"lw": 2.2 if m == "ecif" else 1.2}
        ax.plot(100 * d["fraction"], d["accuracy_mean"], marker="o", ms=3, color=color, label=m, **style)
        if m == "random":
            ax.fill_between(100 * d["fraction"], d["accuracy_mean"] - d["accuracy_std"],
                            d["accuracy_mean"] + d["accuracy_std"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("train pairs removed (%)")
    ax.set_ylabel("test zero-shot accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def cleaning_bars(summary, fraction: float):
    """Table 1 as bars: mean test zero-shot accuracy per method (``summary``:
    :func:`ecif.kit.reports.cleaning_summary`), error bars the std over seeds; each method and
    reference row (``none``, ``random``, ``clean``, ``oracle``) in its colour of :data:`METHOD_COLOURS`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    means, stds = summary[("accuracy", "mean")], summary[("accuracy", "std")].fillna(0.0)
    ax.bar(means.index, means.values, yerr=stds.values,
           color=[method_colour(m) for m in means.index])
    ax.set_ylim(max(0.0, means.min() - 0.05), min(1.0, means.max() + 0.03))
    ax.set_xlabel("pairs removed by (none: the fine-tuned model as is)")
    ax.set_ylabel("test zero-shot accuracy")
    ax.set_title(f"Test accuracy after removing {fraction:.0%} of the train pairs and retraining")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
