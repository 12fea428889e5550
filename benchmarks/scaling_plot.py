"""Draw the benchmark's scaling plots: seconds against the number of pairs n, or against the
number of parameters P at a fixed n, both axes logarithmic.

    python -m ecif.experiments.bench --precision mixed float64 --csv benchmarks/scaling.csv
    python benchmarks/scaling_plot.py benchmarks/scaling.csv docs/img/scaling.png
    python benchmarks/scaling_plot.py benchmarks/scaling_params.csv docs/img/scaling_params.png --x params

Reads the CSV that ``--csv`` writes (one row per n) and draws four lines, one colour each:
scoring every pair (``ecif_all_pairs_s``: the influence solve plus the all-pairs pass), one warm
leave-one-out retraining (``retrain_s``, from the optimum), one cold retraining
(``cold_retrain_s``, from the initial parameters) and the full leave-one-out estimate, ``n`` cold
retrainings (``n * cold_retrain_s``, extrapolated from the one measured). Rows without a value
(a run stopped early) are left out of that line. Only the rows of one batch size are drawn
(``--batch``, default 256; the default grid also has one-full-batch rows). ``--x params`` puts the
parameter count ``params`` on the x axis instead (rows of one ``n``, e.g. a sweep of ``--rank``).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: (column or rule, label, colour) of each line.
LINES = [
    ("ecif_all_pairs_s", "ECIF: score all pairs (one solve + all-pairs pass)", "tab:blue"),
    ("retrain_s", "one warm retraining (from the optimum)", "tab:orange"),
    ("cold_retrain_s", "one cold retraining (from the start)", "tab:green"),
    ("loo_all", "full leave-one-out = n x cold retraining (estimate)", "tab:red"),
]


#: x-axis column -> (axis label, default title).
AXES = {
    "n": ("training pairs n", "Cost as n grows: scoring every pair vs retraining"),
    "params": ("adapter parameters P", "Cost as P grows (fixed n): scoring every pair vs retraining"),
}


def draw(table: pd.DataFrame, out: str, title: str | None = None, batch: str = "256", x: str = "n") -> None:
    """Write the log-log plot of the rows of ``table`` (the bench's CSV rows) with batch size
    ``batch`` (as the CSV writes it: a number or ``full``) to ``out``, against ``x`` (``"n"`` or
    ``"params"``; for ``"params"`` the rows must share one ``n``)."""
    if x not in AXES:
        raise ValueError(f"x must be one of {sorted(AXES)}, got {x!r}.")
    t = table[table["batch"].astype(str) == str(batch)].sort_values(x).copy()
    if t.empty:
        raise ValueError(f"no rows with batch {batch!r} in the table; pick one of {sorted(set(table['batch'].astype(str)))}.")
    if x == "params" and t["n"].nunique() != 1:
        raise ValueError(f"--x params compares rows of one n, but the table has n = {sorted(set(t['n']))}; "
                         "keep the rows of one n (a --rank sweep at a fixed --n).")
    t["loo_all"] = t["n"] * t["cold_retrain_s"]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for col, label, colour in LINES:
        rows = t[t[col].notna()]
        if len(rows):
            ax.plot(rows[x], rows[col], marker="o", color=colour, label=label,
                    linestyle="--" if col == "loo_all" else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(AXES[x][0])
    ax.set_ylabel("wall-clock seconds")
    ax.set_title(title or AXES[x][1] + (f" (n = {int(t['n'].iloc[0]):,})" if x == "params" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="the bench's rows (python -m ecif.experiments.bench ... --csv PATH)")
    ap.add_argument("out", nargs="?", default="docs/img/scaling.png", help="the PNG to write")
    ap.add_argument("--title", help="plot title")
    ap.add_argument("--batch", default="256", help="the batch size whose rows are drawn (default 256)")
    ap.add_argument("--x", default="n", choices=sorted(AXES), help="x axis: pairs n (default) or parameters P")
    args = ap.parse_args(argv)
    draw(pd.read_csv(args.csv), args.out, args.title, args.batch, args.x)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
