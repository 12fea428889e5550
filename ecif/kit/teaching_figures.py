"""Figures and the result record of notebook 00 (influence functions from zero).

Each figure function returns a matplotlib Figure with a title, axis names and one colour per
method (:data:`METHOD_COLORS`, the variants' colours of :mod:`ecif.kit.plotting` included).
:func:`record` writes the notebook's headline numbers as JSON for the test that runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ecif.kit.plotting import VARIANT_COLORS

#: One colour per method shown in notebook 00.
METHOD_COLORS = {
    "estimate": "tab:blue",
    "leave-one-out": "black",
    "flipped": "tab:red",
    **VARIANT_COLORS,
}


def _identity(ax, a, b) -> None:
    lo, hi = float(min(np.min(a), np.min(b))), float(max(np.max(a), np.max(b)))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="identity (perfect estimate)")


def toy_scatter(loo: dict, title: str = "Logistic regression: estimate vs exact leave-one-out"):
    """Predicted ``IS(k)`` against the retrained test-loss change, flipped labels marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    a, p, f = loo["actual"], loo["predicted"], np.asarray(loo["flipped"], bool)
    _identity(ax, a, p)
    ax.scatter(a[~f], p[~f], s=14, color=METHOD_COLORS["estimate"], label="influence estimate")
    ax.scatter(a[f], p[f], s=30, marker="x", color=METHOD_COLORS["flipped"],
               label="influence estimate (flipped label)")
    ax.set_xlabel("exact leave-one-out: L_test(θ̂₋ₖ) − L_test(θ̂)")
    ax.set_ylabel("first-order estimate IS(k)")
    ax.set_title(f"{title}\nPearson {loo['pearson']:.4f}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_figure(lam_rows: list[dict], damping_rows: list[dict]):
    """Left: Pearson and slope against ``lam``; right: the same against the damping ``mu``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, rows, key, name in ((axes[0], lam_rows, "lam", "regularisation λ"),
                                (axes[1], damping_rows, "damping", "damping μ (solve with H + μI)")):
        xs = np.array([r[key] for r in rows], float)
        shown = np.where(xs > 0, xs, np.nan)
        ax.plot(shown, [r["pearson"] for r in rows], marker="o", color="tab:blue", label="Pearson")
        ax.plot(shown, [r["spearman"] for r in rows], marker="s", color="tab:green", label="Spearman")
        ax.plot(shown, [r["slope"] for r in rows], marker="^", color="tab:orange",
                label="slope (size of the estimate / truth)")
        if (xs == 0).any():
            r0 = rows[int(np.flatnonzero(xs == 0)[0])]
            ax.axhline(r0["pearson"], color="tab:blue", ls=":", lw=1, label="Pearson at μ = 0")
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("agreement with exact leave-one-out")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("Where it breaks: weak regularisation")
    lam = damping_rows[0]["lam"] if damping_rows else float("nan")
    axes[1].set_title(f"Damping at λ = {lam:g}: each direction shrinks by ℓ/(ℓ + μ)")
    fig.tight_layout()
    return fig


def nonconvex_figure(study: dict):
    """Section 4b. Left: the undamped estimate against leave-one-out by descent for the saddle fit
    and for the first ``lam`` whose fit is a strict minimum, identity line. Right: Pearson and
    slope against the damping ``mu`` at the saddle fit, with ``mu = -min_eig`` marked (to its
    right ``H + mu I`` is positive definite)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    ax = axes[0]
    rows = {r["lam"]: r for r in study["lam_rows"]}
    everything = np.concatenate([np.concatenate(pa) for pa in study["scatter"].values()])
    _identity(ax, everything, everything)
    for (lam, (pred, act)), colour in zip(study["scatter"].items(), ("tab:red", "tab:blue")):
        r = rows[lam]
        kind = "saddle" if r["min_eig"] < 0 else "strict minimum"
        ax.scatter(act, pred, s=12, color=colour,
                   label=f"λ = {lam:g} ({kind}, ℓ_min {r['min_eig']:.1e}): Pearson {r['pearson']:.3f}")
    ax.set_xlabel("leave-one-out by descent: L_test(θ̂₋ₖ) − L_test(θ̂)")
    ax.set_ylabel("first-order estimate IS(k), undamped")
    ax.set_title("Two-unit network: estimate vs retraining", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    damp = [r for r in study["damping_rows"] if r["damping"] > 0]
    mus = [r["damping"] for r in damp]
    ax.plot(mus, [r["pearson"] for r in damp], marker="o", color="tab:blue", label="Pearson")
    ax.plot(mus, [r["slope"] for r in damp], marker="^", color="tab:orange", label="slope")
    zero = [r for r in study["damping_rows"] if r["damping"] == 0]
    if zero:
        ax.axhline(zero[0]["pearson"], color="tab:blue", ls=":", lw=1, label="Pearson at μ = 0 (indefinite H)")
    lam0 = study["lam_rows"][0]
    if lam0["min_eig"] < 0:
        ax.axvline(-lam0["min_eig"], color="0.3", ls="--", lw=1, label="μ = −ℓ_min: H + μI positive definite to the right")
    ax.set_xscale("log")
    ax.set_xlabel("damping μ (solve with H + μI)")
    ax.set_ylabel("agreement with leave-one-out")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Damping at the saddle (λ = {lam0['lam']:g})", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def roles_figure(roles: dict, slot: int = 0):
    """The batch similarity matrix with pair ``slot``'s two roles, and the softmax mass the other
    pairs put on it (its ``Neg`` term)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    S, P, Q = roles["S"], roles["P"], roles["Q"]
    b = S.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4))
    im = axes[0].imshow(S, cmap="viridis")
    fig.colorbar(im, ax=axes[0], label="similarity S_ab = s⟨u_a, v_b⟩")
    axes[0].add_patch(Rectangle((slot - 0.5, slot - 0.5), 1, 1, fill=False, ec="tab:green", lw=3))
    axes[0].add_patch(Rectangle((-0.5, slot - 0.5), b, 1, fill=False, ec="tab:red", lw=1.5, ls="--"))
    axes[0].add_patch(Rectangle((slot - 0.5, -0.5), 1, b, fill=False, ec="tab:red", lw=1.5, ls="--"))
    labels = [f"{k}{'*' if m else ''}" for k, m in zip(roles["pairs"], roles["misaligned"])]
    axes[0].set_xticks(range(b), labels, fontsize=7)
    axes[0].set_yticks(range(b), labels, fontsize=7)
    axes[0].set_xlabel("text of pair b (column)")
    axes[0].set_ylabel("image of pair a (row)")
    axes[0].set_title(f"Batch similarities: pair {roles['pairs'][slot]} is positive (green) and\n"
                      "negative for every other row and column (red); * misaligned", fontsize=9)
    x = np.arange(b)
    off = x != slot
    axes[1].bar(x[off] - 0.2, P[off, slot], width=0.4, color="tab:purple",
                label="P_ak: image a's row softmax on text k")
    axes[1].bar(x[off] + 0.2, Q[slot, off], width=0.4, color="tab:cyan",
                label="Q_kb: text b's column softmax on image k")
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_xlabel("other pair in the shown corner of the batch")
    axes[1].set_ylabel("probability put on pair k as a negative")
    axes[1].set_title(f"Neg_k sums these over the whole batch: Neg_k = {roles['neg'][slot]:.3f}",
                      fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def contrastive_scatter(table, variants=("positive", "ecif")):
    """Predicted ``IS(k)`` per variant against leave-one-out retraining, clean and misaligned
    pairs marked, identity line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    a = table["actual"].to_numpy()
    mis = table["misaligned"].to_numpy()
    _identity(ax, a, np.concatenate([table[v].to_numpy() for v in variants]))
    for v in variants:
        p = table[v].to_numpy()
        ax.scatter(a[~mis], p[~mis], s=18, color=METHOD_COLORS[v], label=f"{v} (clean pair)")
        ax.scatter(a[mis], p[mis], s=36, marker="x", color=METHOD_COLORS[v],
                   label=f"{v} (misaligned pair)")
    ax.set_xlabel("leave-one-out retraining: L_val(θ̂₋ₖ) − L_val(θ̂)")
    ax.set_ylabel("predicted IS(k)")
    ax.set_title("Contrastive pairs: ECIF vs positive-only vs retraining")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def record(out_dir: str | os.PathLike | None, **numbers) -> Path | None:
    """Write ``numbers`` (plus the kernel's working directory) to ``<out_dir>/notebook00.json``;
    nothing when ``out_dir`` is empty."""
    if not out_dir:
        return None
    path = Path(out_dir) / "notebook00.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cwd": os.getcwd(), **numbers}, indent=1, default=float))
    return path
