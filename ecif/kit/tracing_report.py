"""Glue of the ``tracing`` stage (notebook ``13_tracing_repair``): heatmaps, metrics and findings of
causal traces (:func:`ecif.experiments.tracing_study.tracing_study`).

* :func:`heatmap_figure`: one panel per (attribute, tower, module kind), the mean normalised
  indirect effect (NIE) over the flipped examples, layer x token position;
* :func:`metrics`: ``tracing.<attribute>.<tower>.*`` (probabilities, flips, the largest NIE of
  each module kind and the layer where it sits);
* :func:`findings`: the sentences the notebook prints, computed from those numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["findings", "heatmap_figure", "metrics", "peaks"]


def peaks(study: dict) -> pd.DataFrame:
    """Per (tower, kind, restore): the largest mean NIE over (layer, token position), its layer,
    its token position and that position's most common role; from ``study["tokens"]``."""
    tok = study["tokens"].dropna(subset=["nie"])
    idx = tok.groupby(["tower", "kind", "restore"], sort=False)["nie"].idxmax()
    return tok.loc[idx, ["tower", "kind", "restore", "layer", "token", "role", "nie"]].reset_index(drop=True)


def metrics(studies: dict) -> dict:
    """``{"tracing": {attribute: {tower: {...}}}}`` for ``studies`` (``{attribute: study}``):
    ``p_clean``, ``p_corrupt`` (means over the traced examples), ``n_flipped`` and, per module
    kind, ``nie_max_<kind>`` (single-layer restorations) with ``peak_layer_<kind>``."""
    out: dict = {}
    for attribute, study in studies.items():
        ex = study["examples"].set_index("tower")
        pk = peaks(study)
        for tower in ex.index:
            row = {"p_clean": float(ex.loc[tower, "p_clean"]), "p_corrupt": float(ex.loc[tower, "p_corrupt"]),
                   "n_flipped": int(ex.loc[tower, "n_flipped"])}
            for _, p in pk[(pk["tower"] == tower) & (pk["restore"] == "layer")].iterrows():
                row[f"nie_max_{p['kind']}"] = float(p["nie"])
                row[f"peak_layer_{p['kind']}"] = int(p["layer"])
            out.setdefault(attribute, {})[tower] = row
    return {"tracing": out}


def findings(studies: dict) -> list[str]:
    """One sentence per (attribute, tower): how often the corruption flips retrieval and where
    restoring one module at one token brings the most of the clean answer back (single layers and
    windows)."""
    lines = []
    for attribute, study in studies.items():
        ex = study["examples"].set_index("tower")
        pk = peaks(study)
        for tower in ex.index:
            e = ex.loc[tower]
            part = pk[pk["tower"] == tower].sort_values("nie", ascending=False)
            if int(e["n_flipped"]) == 0 or part.empty:
                lines.append(f"{attribute}, {tower} tower: the corruption flips no retrieval; nothing to trace.")
                continue
            best = part.iloc[0]
            where = "at layer" if best["restore"] == "layer" else f"in a window of layers ({best['restore']}) centred on layer"
            single = part[part["restore"] == "layer"]
            top_single = float(single["nie"].max()) if len(single) else float("nan")
            lines.append(
                f"{attribute}, {tower} tower: the corruption flips {int(e['n_flipped'])} of {int(e['n'])} retrievals "
                f"(p correct {e['p_clean']:.3f} clean, {e['p_corrupt']:.3f} corrupted). The most is restored by the "
                f"{best['kind']} output {where} {int(best['layer'])}, token {int(best['token'])} "
                f"({best['role']}): NIE {best['nie']:.2f}; the best single module at one layer and token: "
                f"{top_single:.2f}" + (" (the constraint is spread, not stored at one place)." if top_single < 0.2
                                       else "."))
    return lines


def heatmap_figure(studies: dict, window: bool = False):
    """A grid of heatmaps: rows = (attribute, tower), columns = module kinds; each panel is the
    mean NIE over flipped examples (:meth:`~ecif.experiments.tracing.Trace.heatmap`), y = layer,
    x = token position (text: positions; image: 0 = class token, then patches)."""
    import matplotlib.pyplot as plt

    rows = [(a, tower, tr) for a, s in studies.items() for (_, tower), tr in s["traces"].items()]
    kinds = sorted({k for _, _, tr in rows for k in tr.kinds}, key=["hidden", "attn", "mlp"].index)
    fig, axes = plt.subplots(len(rows), len(kinds), figsize=(4.2 * len(kinds), 2.4 * len(rows)), squeeze=False)
    for i, (attribute, tower, tr) in enumerate(rows):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            if kind not in tr.kinds or (window and tr.restored_window is None):
                ax.axis("off")
                continue
            heat = tr.heatmap(kind, window=window)
            im = ax.imshow(heat, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(0.05, float(np.nanmax(heat))),
                           origin="lower", interpolation="nearest")
            ax.set_title(f"{attribute}, {tower} tower, {kind}" + (f" (window {tr.window})" if window else ""),
                         fontsize=9)
            ax.set_xlabel("token position" + (" (0 = class token)" if tower == "image" else ""))
            ax.set_ylabel("layer")
            ax.set_yticks(range(heat.shape[0]))
            fig.colorbar(im, ax=ax, label="NIE")
    fig.suptitle("Causal tracing: share of the clean retrieval restored by one module's clean output")
    fig.tight_layout()
    return fig


def edit_layer(study: dict) -> int:
    """The text-tower layer the trace points to for an edit: the centre of the MLP window with the
    largest mean NIE at the constraint's tokens (single-layer restorations when the study has no
    windows). The edit (:func:`ecif.experiments.repair.rank_one_text_edit`) rewrites that layer's
    MLP output projection."""
    r = study["roles"]
    r = r[(r["tower"] == "text") & (r["kind"] == "mlp") & (r["role"] == "constraint")].dropna(subset=["nie"])
    windows = r[r["restore"] != "layer"]
    r = windows if len(windows) else r
    if r.empty:
        raise ValueError("the study has no text-tower MLP trace at the constraint tokens: trace towers=('text',) "
                         "with kinds including 'mlp', or give the edit layer explicitly.")
    return int(r.loc[r["nie"].idxmax(), "layer"])


def repair_findings(summary: pd.DataFrame, word: str, layer: int) -> list[str]:
    """Sentences on the repair table (:func:`ecif.experiments.repair.summarise`: index repair,
    columns (metric, mean|std)): which repair fixes the swapped captions most, what it costs
    elsewhere, and where the kit's data repairs stand."""
    eff, gen, drift, zs = (summary[(m, "mean")] for m in ("efficacy", "generalisation", "unrelated_drift", "zero_shot"))
    best = eff.drop("none").idxmax()
    out = [f"Captions naming {word!r}: accuracy {eff['none']:.3f} unrepaired; best repair {best} ({eff[best]:.3f}, "
           f"other templates {gen[best]:.3f}). The edit at text layer {layer}: {eff['edit']:.3f} "
           f"(other templates {gen['edit']:.3f}), unrelated captions drift {drift['edit']:.4f} (1 - cos)."]
    data = [r for r in ("ecif_top_k", "oracle", "finetune") if r in eff.index]
    out.append("Repairs by data: " + "; ".join(f"{r} {eff[r]:.3f} (drift {drift[r]:.4f}, zero-shot {zs[r]:.3f})"
                                                  for r in data) + f"; unrepaired zero-shot {zs['none']:.3f}.")
    top = zs.idxmax()
    out.append(f"Overall zero-shot test accuracy is best after {top} ({zs[top]:.3f}): "
               + ("the edit fixes the named word, the refit fixes the whole model." if top != "edit"
                  else "the edit also gives the best overall accuracy."))
    return out
