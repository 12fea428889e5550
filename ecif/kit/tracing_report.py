"""Glue of the ``tracing`` stage (notebook ``13_tracing_repair``): heatmaps, metrics and findings of
causal traces (:func:`ecif.experiments.tracing_study.tracing_study`).

* :func:`heatmap_figure`: one panel per (attribute, tower, module kind), the mean normalised
  indirect effect (NIE) over the flipped examples, layer x token position;
* :func:`metrics`: ``tracing.<attribute>.<tower>.*`` (probabilities, flips, the largest NIE of
  each module kind and the layer where it sits);
* :func:`findings`: the sentences the notebook prints, computed from those numbers;
* :func:`block_metrics`, :func:`block_findings`, :func:`block_figure`: the same for the clean
  and swap block fits of :func:`ecif.kit.tracing_stage.block_study` (where the misalignment lives).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["block_figure", "block_findings", "block_metrics", "constraint_mlp_trace", "findings", "heatmap_figure", "metrics", "peaks",
           "times"]


def peaks(study: dict) -> pd.DataFrame:
    """Per (tower, kind, restore): the largest mean NIE over (layer, token position), its layer,
    its token position and that position's most common role; from ``study["tokens"]``."""
    tok = study["tokens"].dropna(subset=["nie"])
    idx = tok.groupby(["tower", "kind", "restore"], sort=False)["nie"].idxmax()
    return tok.loc[idx, ["tower", "kind", "restore", "layer", "token", "role", "nie"]].reset_index(drop=True)


def metrics(studies: dict, block: dict | None = None) -> dict:
    """``{"tracing": {attribute: {tower: {...}}}}`` for ``studies`` (``{attribute: study}``):
    ``p_clean``, ``p_corrupt`` (means over the traced examples), ``n_flipped`` and, per module
    kind, ``nie_max_<kind>`` (single-layer restorations) with ``peak_layer_<kind>``; plus
    ``"block"`` (:func:`block_metrics`) when the clean and swap block fits ran."""
    out: dict = dict(block_metrics(block))
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


def constraint_mlp_trace(study: dict) -> pd.DataFrame:
    """The rows of ``study["roles"]`` for the text tower's MLP outputs restored at the constraint's
    tokens (every restoration: single layers and windows), without NaN ``nie``."""
    r = study["roles"]
    return r[(r["tower"] == "text") & (r["kind"] == "mlp") & (r["role"] == "constraint")].dropna(subset=["nie"])


def edit_layer(study: dict) -> int:
    """The text-tower layer the trace points to for an edit: the centre of the MLP window with the
    largest mean NIE at the constraint's tokens (single-layer restorations when the study has no
    windows). The edit (:func:`ecif.experiments.repair.rank_one_text_edit`) rewrites that layer's
    MLP output projection."""
    r = constraint_mlp_trace(study)
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


# ------------------------------------------------------------------ clean vs swap block fits


def _retrieval_means(block: dict) -> pd.DataFrame:
    """Per model: ``p_true``, ``p_swapped``, ``top_swapped`` averaged over the swap rules."""
    r = block["retrieval"]
    return r.groupby("model", sort=False)[["p_true", "p_swapped", "top_swapped"]].mean()


def block_metrics(block: dict | None) -> dict:
    """``{"block": {...}}`` for the metrics' ``tracing`` group (``{}`` when ``block`` is None, the
    fits switched off): the swapped ``attribute`` and ``rules``; per model ``retrieval.<model>.
    {p_true, p_swapped, top_swapped}``; per tower and module kind ``<tower>.<kind>.{diff_layer,
    diff, diff_L<l>}``: the layer where the mean NIE of the swap fit differs most from the clean
    fit's, that difference and the difference at every layer; ``<tower>.adapted_layers``; and
    the fits' gradient norms."""
    if block is None:
        return {}
    from ecif.experiments.trace_contrast import largest_difference

    out: dict = {"attribute": block["attribute"], "rate": block["rate"],
                 "rules": "; ".join(f"{a}: {s} -> {t}" for a, s, t in block["rules"]),
                 "retrieval": {m: {k: float(v) for k, v in row.items()} for m, row in _retrieval_means(block).iterrows()},
                 "fit_grad_norm": {m: float(f["fit_grad_norm"]) for m, f in block["fits"].items()}}
    c = block["contrast"]
    peaks_ = largest_difference(c)
    for (tower, kind), part in c.groupby(["tower", "kind"], sort=False):
        row = {f"diff_L{int(l)}": float(d) for l, d in zip(part["layer"], part["diff"])}
        pk = peaks_[(peaks_["tower"] == tower) & (peaks_["kind"] == kind)]
        if len(pk):
            row.update(diff_layer=int(pk["layer"].iloc[0]), diff=float(pk["diff"].iloc[0]))
        out.setdefault(tower, {})[kind] = row
    for tower, layers in block["adapted"].items():
        out.setdefault(tower, {})["adapted_layers"] = ",".join(map(str, layers))
    return {"block": out}


def times(repair_seconds, block: dict | None = None) -> dict:
    """The metrics' ``time`` group: ``<repair>_s`` (mean seconds per repair, ``repair_seconds`` a
    Series by repair) and, when the block fits ran, ``block_fits_s`` and ``block_traces_s``."""
    out = {f"{r}_s": round(float(s), 2) for r, s in repair_seconds.items()}
    if block is not None:
        out.update(block_fits_s=round(float(block["fit_seconds"]), 2),
                   block_traces_s=round(float(block["trace_seconds"]), 2))
    return out


def block_findings(block: dict | None) -> list[str]:
    """Sentences on the clean and swap block fits: whether the swap fit retrieves the swapped
    caption, and per tower the layer where its trace differs most from the clean fit's, said
    against the layers the fine-tune could change."""
    if block is None:
        return ["Block fits switched off (tracing.block_fits: false): no clean-vs-swap trace."]
    from ecif.experiments.trace_contrast import largest_difference

    r = _retrieval_means(block)
    rules = ", ".join(f"{s} -> {t}" for _, s, t in block["rules"])
    lines = [f"Block fits with {block['attribute']} swapped ({rules}) in {block['rate']:.0%} of the train captions: on "
             f"test images showing a swapped source value, the swap fit gives the swapped caption probability "
             f"{r.loc['swap', 'p_swapped']:.3f} and the true one {r.loc['swap', 'p_true']:.3f} (clean fit "
             f"{r.loc['clean', 'p_swapped']:.3f} / {r.loc['clean', 'p_true']:.3f}, frozen encoder "
             f"{r.loc['base', 'p_swapped']:.3f} / {r.loc['base', 'p_true']:.3f}); its top caption is the swapped one "
             f"for {r.loc['swap', 'top_swapped']:.0%} of them (clean fit {r.loc['clean', 'top_swapped']:.0%})."]
    peaks_ = largest_difference(block["contrast"])
    for tower in dict.fromkeys(block["contrast"]["tower"]):
        part = peaks_[peaks_["tower"] == tower]
        if part.empty:
            lines.append(f"{tower} tower: no flipped example in one of the fits; no contrast.")
            continue
        best = part.loc[part["diff"].abs().idxmax()]
        adapted = block["adapted"].get(tower, [])
        inside = int(best["layer"]) in adapted
        lines.append(
            f"{tower} tower: the swap fit's mean NIE differs most from the clean fit's at layer {int(best['layer'])} "
            f"({best['kind']}, swap - clean = {best['diff']:+.3f}); the fine-tune adapted layer(s) "
            f"{', '.join(map(str, adapted))} and the projection, so "
            + ("the difference sits in the adapted block, as it must if it is where the swap was learned."
               if inside else "the largest difference is upstream of the adapted block: restoring an earlier layer "
                              "now passes through the changed block, so the change shows before it."))
    return lines


def block_figure(block: dict | None):
    """Mean NIE per layer (mean over token positions of the single-layer heatmaps) of the frozen
    encoder, the clean fit and the swap fit: one panel per tower, one colour per model, solid =
    attention, dashed = MLP outputs; the adapted layers shaded. A figure saying the fits are off
    when ``block`` is None."""
    import matplotlib.pyplot as plt

    if block is None:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "block fits switched off (tracing.block_fits: false)", ha="center", va="center")
        return fig
    c = block["contrast"]
    towers = list(dict.fromkeys(c["tower"]))
    models = [col[len("nie_mean_"):] for col in c.columns if col.startswith("nie_mean_")]
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(towers), figsize=(5.2 * len(towers), 3.4), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        part = c[c["tower"] == tower]
        for layer in block["adapted"].get(tower, []):
            ax.axvspan(layer - 0.5, layer + 0.5, color="0.9", zorder=0)
        for kind, style in (("attn", "-"), ("mlp", "--")):
            k = part[part["kind"] == kind]
            for m in models:
                ax.plot(k["layer"], k[f"nie_mean_{m}"], style, marker="o", color=colours[m], label=f"{m}, {kind}")
        ax.set_xlabel("layer (shaded: adapted by the fine-tune)")
        ax.set_ylabel("mean NIE over token positions")
        ax.set_title(f"{tower} tower")
        ax.set_xticks(sorted(part["layer"].unique()))
        ax.legend(fontsize=7)
    fig.suptitle(f"Causal traces of the {block['attribute']} slot: frozen encoder, clean fit, swap fit (block mode)")
    fig.tight_layout()
    return fig
