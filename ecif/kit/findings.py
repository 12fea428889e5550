"""What each notebook found, as sentences computed from its own numbers, and the check cells of
its exercises.

One ``*_findings`` function per notebook (01 to 10). Each takes values the notebook already holds
in memory (its metrics dicts and tables) and returns a list of sentences with the numbers
formatted; nothing is pasted. The ``exercise_*`` helpers run the cheap variant an exercise asks
about (seconds: no retraining) and return the comparison as sentences, so that the notebooks stay
thin; those that recompute with the kit's math (``ecif/core``, ``ecif/experiments``) are in
:mod:`ecif.kit.exercises`, so that stages 1 and 2 do not depend on those folders. :func:`show`
prints a list of sentences, one a line.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

VARIANT_NAMES = {"ecif": "ECIF (both roles)", "positive": "positive-only (classical IF)",
                 "negative": "negative-only", "newton": "exact removal (Newton)"}


def show(lines) -> None:
    """Print the sentences, one a line."""
    for line in lines:
        print(line)


def _rank(values: dict, key, name: str) -> tuple[int, list]:
    """Rank (1 = best, ties in the dict's order) of ``name`` when sorting ``values`` by ``key``
    descending, and the sorted names."""
    order = sorted(values, key=lambda m: -key(values[m]))
    return order.index(name) + 1 if name in order else None, order


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# ------------------------------------------------------------------------------- 01 inject
def inject_findings(mask, kind: str, rate: float) -> list[str]:
    """Stage 1: how many pairs were corrupted, and the chance level that follows."""
    mask = np.asarray(mask, dtype=bool)
    n, k = len(mask), int(mask.sum())
    return [f"{k} of {n} train pairs ({_pct(k / n)}) carry a wrong caption ({kind}); the requested rate "
            f"{rate:g} gives round({rate:g} x {n}) = {round(rate * n)}.",
            f"A detector that flags pairs at random has precision {k / n:.3f} at any k (the base rate) and AUROC "
            f"0.5: the bar every method of stage 5 has to clear."]


def exercise_inject_seed(train, kind: str, rate: float, seed: int, other_seed: int) -> list[str]:
    """Exercise: a second seed picks its own pairs; overlap against the ``rate² n`` that
    independent draws would share."""
    from ecif.data.noise import inject
    a = inject(train, kind, rate, seed).mask
    b = inject(train, kind, rate, other_seed).mask
    n, both = len(a), int((a & b).sum())
    return [f"seed {seed} and seed {other_seed} corrupt {int(a.sum())} pairs each; {both} pairs are corrupted "
            f"by both, against {rate * rate * n:.1f} expected for independent draws (rate² x n)."]


# ------------------------------------------------------------------------------ 02 encoder
def encoder_findings(record: dict, pretrained: bool) -> list[str]:
    """Stage 2: the encoder's training loss, first against last epoch, and against chance:
    ``log(batch size)`` (``record["batch_size"]``), the loss of a model that cannot tell pairs apart."""
    if pretrained:
        return [f"No training: the pretrained encoder {record.get('arch', '')} is used as recorded "
                f"(checkpoint of {record.get('checkpoint_bytes', 0)} bytes)."]
    loss = list(record["loss_per_epoch"])
    out = [f"The CLIP loss fell from {loss[0]:.3f} after epoch 1 to {loss[-1]:.3f} after epoch {len(loss)} "
           f"({_pct(1 - loss[-1] / loss[0])} lower)."]
    batch_size = record.get("batch_size")
    if batch_size:
        chance = math.log(batch_size)
        out.append(f"A model that cannot tell the pairs of a batch of {batch_size} apart has loss log({batch_size}) "
                   f"= {chance:.3f}; the final loss is {loss[-1] / chance:.2f} of that.")
    return out


def exercise_epochs(record: dict, epochs: int) -> list[str]:
    """Exercise: the loss after ``epochs`` epochs of the same run, against the last."""
    loss = list(record.get("loss_per_epoch", []))
    if not loss:
        return ["no training here (a pretrained encoder): nothing to compare."]
    e = max(1, min(epochs, len(loss)))
    return [f"after {e} epoch{'s' * (e != 1)} the loss was {loss[e - 1]:.3f}; after all {len(loss)} it is "
            f"{loss[-1]:.3f} (the remaining {len(loss) - e} removed {loss[e - 1] - loss[-1]:.3f})."]


# ----------------------------------------------------------------------------- 03 finetune
def finetune_findings(metrics: dict, lam: float) -> list[str]:
    """Stage 3: convergence, curvature (what λ contributes to it) and zero-shot accuracy, from
    the stage's metrics dict (``fit``, ``hessian``, ``zero_shot``)."""
    fit, hess, zs = metrics["fit"], metrics["hessian"], metrics.get("zero_shot") or {}
    out = [f"The fit {'converged' if fit['converged'] else 'did NOT converge'} in {fit['iterations']} Newton "
           f"iterations to gradient norm {fit['grad_norm']:.1e} ({fit['n_params']} parameters, "
           f"{fit['n_train']} pairs, {fit['n_misaligned']} misaligned)."]
    lo = hess["min_eigenvalue"]
    loss_part = lo - lam
    verdict = ("so the loss alone is not convex there: the L2 pull lam makes θ̂ a strict minimum"
               if loss_part < 0 else "so the loss alone is already convex there")
    out.append(f"The Hessian's smallest eigenvalue is {lo:.3g} (largest {hess['max_eigenvalue']:.3g}); without "
               f"the lam = {lam:g} it contributes it would be {loss_part:.3g}, {verdict}.")
    base, fitted = zs.get("base"), zs.get("fitted")
    if base is not None and fitted is not None:
        change = "raised" if fitted > base else "lowered" if fitted < base else "left"
        out.append(f"Fine-tuning on the corrupted split {change} test zero-shot accuracy from {base:.3f} to "
                   f"{fitted:.3f} ({fitted - base:+.3f}).")
    return out


def exercise_lam(problem_lam: float, curvature, lam_new: float) -> list[str]:
    """Exercise: at the same θ̂, λ adds ``λ I`` to the Hessian, so every eigenvalue moves by the
    change of λ. ``curvature``: the dense Hessian, or :func:`ecif.kit.problem.curvature`'s dict;
    with a dense Hessian the check recomputes the eigenvalues of ``H - (λ - λ_new) I``, without
    one (block mode) it shifts the Lanczos estimate of the smallest eigenvalue."""
    import torch
    if isinstance(curvature, dict) and curvature.get("hessian") is None:
        lo = float(curvature["min_eigenvalue"])
        shifted = lo - (problem_lam - lam_new)
    else:
        hessian = curvature["hessian"] if isinstance(curvature, dict) else curvature
        h = torch.as_tensor(hessian, dtype=torch.float64)
        lo = float(torch.linalg.eigvalsh(h)[0])
        shifted = float(torch.linalg.eigvalsh(h - (problem_lam - lam_new) * torch.eye(h.shape[0], dtype=h.dtype))[0])
    state = ("still a strict minimum" if shifted > 0 else
             "no longer a strict minimum, which the inverse Hessian of influence functions needs")
    return [f"smallest eigenvalue at lam = {problem_lam:g}: {lo:.4g}; at lam = {lam_new:g} (same θ̂): {shifted:.4g}, "
            f"{state}."]


# --------------------------------------------------------------------------------- 04 loo
def loo_findings(stats: dict) -> list[str]:
    """Stage 4: agreement of each variant with leave-one-out retraining, ``{variant: {"pearson",
    "spearman"}}`` (as :func:`ecif.experiments.retraining.loo_metrics` gives)."""
    variants = {v: s for v, s in stats.items() if isinstance(s, dict) and "spearman" in s}
    r, order = _rank(variants, lambda s: s["spearman"], "ecif")
    best = order[0]
    out = [f"ECIF predicts the retrained validation-loss change with Spearman {variants['ecif']['spearman']:.3f} "
           f"(Pearson {variants['ecif']['pearson']:.3f}), rank {r} of {len(order)} variants; the best is "
           f"{VARIANT_NAMES.get(best, best)} ({variants[best]['spearman']:.3f})."]
    if "positive" in variants and "negative" in variants:
        gain = variants["ecif"]["spearman"] - variants["positive"]["spearman"]
        word = "raises" if gain > 0 else "lowers" if gain < 0 else "does not change"
        out.append(f"Positive role only: Spearman {variants['positive']['spearman']:.3f}; negative role only: "
                   f"{variants['negative']['spearman']:.3f}; adding the negative role to the positive {word} the "
                   f"Spearman by {abs(gain):.3f}.")
    return out


def peers_findings(stats: dict, peers, kit: str = "ecif", target: str = "positive") -> list[str]:
    """Stage peers: each peer's agreement with leave-one-out retraining (all and clean pairs)
    and detection AUROC, against the kit's ``target`` variant (the quantity a per-example
    library targets) and ``kit`` (ECIF); ``stats`` maps a method to
    :func:`ecif.experiments.peers.agreement`."""
    peers = list(peers)
    k, t = stats[kit], stats[target]
    if not peers:
        return [f"No peer ran. Against retraining: ECIF Spearman {k['spearman']:.3f}, the kit's {target} variant "
                f"{t['spearman']:.3f}; detection AUROC ECIF {k['auroc']:.3f}, {target} {t['auroc']:.3f}."]
    best = max(peers, key=lambda m: stats[m]["spearman"])
    out = [f"Best peer against retraining: {best}, Spearman {stats[best]['spearman']:.3f} (Pearson "
           f"{stats[best]['pearson']:.3f}); the kit's {target} variant {t['spearman']:.3f}, ECIF {k['spearman']:.3f}."]
    for m in peers:
        s = stats[m]
        gap = s["spearman"] - t["spearman"]
        where = "equal to" if abs(gap) < 5e-4 else f"{abs(gap):.3f} {'above' if gap > 0 else 'below'}"
        out.append(f"{m}: Spearman {s['spearman']:.3f} on all pairs, {s['spearman_clean']:.3f} on clean pairs; "
                   f"AUROC {s['auroc']:.3f}; {where} the {target} variant's Spearman.")
    beat = [m for m in peers if stats[m]["auroc"] > k["auroc"]]
    out.append(f"Detection AUROC over all train pairs: ECIF {k['auroc']:.3f}, {target} {t['auroc']:.3f}; "
               + (f"{', '.join(beat)} beat{'s' if len(beat) == 1 else ''} ECIF." if beat else "no peer beats ECIF."))
    return out


def exercise_clean_only(table: pd.DataFrame, variant: str = "ecif") -> list[str]:
    """Exercise: Spearman of ``variant`` against ``actual`` on all sampled pairs, on the clean
    ones only and on the misaligned ones only."""
    out = []
    for name, sel in (("all", slice(None)), ("clean", ~table["misaligned"].astype(bool)),
                      ("misaligned", table["misaligned"].astype(bool))):
        part = table.loc[sel]
        rho = spearmanr(part[variant], part["actual"])[0] if len(part) > 2 else float("nan")
        out.append(f"{name:10s} {len(part):3d} pairs: Spearman {rho:.3f}, actual changes spread "
                   f"{part['actual'].std():.2e} (std)")
    return out


# ------------------------------------------------------------------------------ 05 detect
def detect_findings(detect: dict, k: int, n: int) -> list[str]:
    """Stage 5 (and each cell of 6a): ECIF's place by AUROC among all methods, the best method,
    and ECIF's precision@k against the base rate ``k / n``. ``detect``: ``{method: {auroc,
    average_precision, precision_at_k, recall_at_k}}``."""
    r, order = _rank(detect, lambda s: s["auroc"], "ecif")
    best, e = order[0], detect["ecif"]
    out = [f"ECIF ranks {r} of {len(order)} methods by AUROC ({e['auroc']:.3f}); the best is {best} "
           f"({detect[best]['auroc']:.3f})."]
    base = k / n
    out.append(f"Among its first k = {k} flagged pairs ECIF finds {e['precision_at_k'] * k:.0f} misaligned "
               f"(precision@k {e['precision_at_k']:.3f}, {e['precision_at_k'] / base:.1f}x the base rate {base:.3f}).")
    cheap = [m for m in ("cosine", "pair_loss") if m in detect and detect[m]["auroc"] > e["auroc"]]
    if cheap:
        out.append(f"Cheaper filters beat it here ({', '.join(cheap)}): they score how badly a pair fits, which is "
                   f"what a wrong caption does; ECIF scores a pair's effect on the validation loss.")
    else:
        out.append("No cheap filter (cosine, pair_loss) beats ECIF by AUROC here.")
    return out


def sweep_findings(summary: dict) -> list[str]:
    """Stage 6b, from the sweep's metrics dict (``detection_sweep``: per kind and method,
    ``auroc_mean``; ``detection_winner``: per kind)."""
    sweep, out, ecif_auroc = summary["detection_sweep"], [], {}
    for kind, methods in sweep.items():
        r, order = _rank(methods, lambda s: s["auroc_mean"], "ecif")
        best = order[0]
        ecif_auroc[kind] = methods["ecif"]["auroc_mean"] if "ecif" in methods else float("nan")
        out.append(f"{kind}: the best by mean AUROC is {best} ({methods[best]['auroc_mean']:.3f}); ECIF ranks {r} "
                   f"of {len(order)} ({ecif_auroc[kind]:.3f}).")
    if len(ecif_auroc) > 1:
        hard = min(ecif_auroc, key=ecif_auroc.get)
        easy = max(ecif_auroc, key=ecif_auroc.get)
        out.append(f"For ECIF the hardest kind is {hard} (AUROC {ecif_auroc[hard]:.3f}), the easiest {easy} "
                   f"({ecif_auroc[easy]:.3f}).")
    return out


def ablation_findings(roles: dict, damp: pd.DataFrame, lam_tab: pd.DataFrame, batch_tab: pd.DataFrame) -> list[str]:
    """Stage 7: which role carries the influence (``roles``: ``{variant: {spearman, auroc, ...}}``),
    and how ECIF's Spearman moves with damping μ, λ and the batch size (tables with the columns
    ``damping``/``lam``/``batch_size``, ``variant``, ``spearman``, ``min_eigenvalue``)."""
    r = roles
    carrier = max(("positive", "negative"), key=lambda v: r[v]["spearman"])
    gain = r["ecif"]["spearman"] - r[carrier]["spearman"]
    verdict = (f"the two roles together predict clearly better than either alone ({gain:+.3f} over the {carrier} role)"
               if gain > 0.05 else f"the {carrier} role carries most of the influence")
    out = [f"Against leave-one-out, positive-only Spearman {r['positive']['spearman']:.3f}, negative-only "
           f"{r['negative']['spearman']:.3f}, both (ECIF) {r['ecif']['spearman']:.3f}: {verdict}."]
    for tab, col, name in ((damp, "damping", "damping μ"), (lam_tab, "lam", "λ"), (batch_tab, "batch_size", "batch size")):
        e = tab[tab["variant"] == "ecif"].reset_index(drop=True)
        if not len(e):
            continue
        best = e.loc[e["spearman"].idxmax()]
        worst = e.loc[e["spearman"].idxmin()]
        if best["spearman"] - worst["spearman"] < 5e-4:
            out.append(f"{name}: ECIF's Spearman is {best['spearman']:.3f} at every value of the sweep "
                       f"({', '.join(str(v) for v in e[col])}).")
            continue
        out.append(f"{name}: ECIF's Spearman is highest at {best[col]} ({best['spearman']:.3f}) and lowest at "
                   f"{worst[col]} ({worst['spearman']:.3f}).")
    if "neg_to_pos" in batch_tab:
        e = batch_tab[batch_tab["variant"] == "ecif"]
        out.append(f"The negative-role scores are {e['neg_to_pos'].min():.2f} to {e['neg_to_pos'].max():.2f} times "
                   f"the size of the positive ones across batch sizes {', '.join(str(v) for v in e['batch_size'])}.")
    return out


def exercise_lam_curvature(lam_tab: pd.DataFrame) -> list[str]:
    """Exercise: the smallest Hessian eigenvalue at each λ, and what is left without λ."""
    e = lam_tab.drop_duplicates("lam")
    return [f"lam = {r.lam:g}: smallest eigenvalue {r.min_eigenvalue:.4f}, minus lam {r.min_eigenvalue - r.lam:+.4f}"
            for r in e.itertuples()]


# ---------------------------------------------------------------------------- 08 cleaning
def cleaning_findings(metrics: dict) -> list[str]:
    """Stage 8, from the cleaning metrics dict (:func:`ecif.kit.reports.cleaning_metrics`). The
    ``clean`` and ``oracle`` rows bound the experiment; a best method is named only when
    ``cleaning.separable`` holds (the oracle gap exceeds the random deletions' spread)."""
    c, m = metrics["cleaning"], metrics["cleaning_n_removed"]
    refs = ("none", "random", "clean", "oracle")
    methods = {k: v for k, v in c.items() if k not in refs and isinstance(v, dict)}
    best = max(methods, key=lambda k: methods[k]["accuracy_mean"])
    none, rnd = c["none"]["accuracy_mean"], c["random"]
    out = []
    if "oracle" in c:
        bounds = f"removing exactly the injected pairs (oracle) gives {c['oracle']['accuracy_mean']:.3f}"
        if "clean" in c:
            bounds += f", fitting on the true captions {c['clean']['accuracy_mean']:.3f}"
        out.append(f"No removal gives test accuracy {none:.3f}; {bounds}.")
    ranked = c.get("separable", True)
    if ranked:
        out.append(f"Removing {m} pairs: the best method is {best} (test accuracy {methods[best]['accuracy_mean']:.3f}, "
                   f"{methods[best]['misaligned_removed']:.0f} misaligned removed), against {none:.3f} with no removal "
                   f"and {rnd['accuracy_mean']:.3f} ± {rnd['accuracy_std']:.3f} for random removals.")
    else:
        out.append(f"The oracle gap ({c.get('gap', float('nan')):+.4f}) is within the random removals' spread "
                   f"(std {c.get('random_std', float('nan')):.4f}): this setting cannot rank the methods, so none is "
                   f"named best.")
    if "ecif" in c:
        e = c["ecif"]
        line = (f"ECIF's removal set holds {e['misaligned_removed']:.0f} misaligned pairs of {m}; accuracy "
                f"{e['accuracy_mean']:.3f} ({e['accuracy_mean'] - none:+.3f} against no removal)")
        behind = methods[best]["accuracy_mean"] - e["accuracy_mean"]
        if ranked and best != "ecif" and behind > 0:  # where the kit's own method loses, and by how much
            std = c.get("random_std", rnd.get("accuracy_std", float("nan")))
            within = "within" if behind <= 2 * std else "beyond"
            line += f"; {best} is ahead of it by {behind:.3f}, {within} two seed-to-seed std ({2 * std:.3f})"
        out.append(line + ".")
    h = metrics.get("editing", {}).get("harmful_ecif")
    if h:
        out.append(f"Editing instead of retraining (most harmful set): influence predicted a validation-loss change "
                   f"of {h['predicted_val_change']:+.3f}, retraining gave {h['actual_val_change']:+.3f}; test accuracy "
                   f"{h['acc_edited']:.3f} edited vs {h['acc_retrained']:.3f} retrained.")
    return out


def exercise_fraction(scores: pd.DataFrame, mask, fraction: float, methods=("ecif", "cosine")) -> list[str]:
    """Exercise: misaligned pairs among the top ``fraction`` of each method's scores (no
    retraining)."""
    mask = np.asarray(mask, dtype=bool)
    m = round(fraction * len(mask))
    out = []
    for meth in methods:
        top = np.argsort(-scores[meth].to_numpy(), kind="stable")[:m]
        out.append(f"{meth:8s} top {m} ({fraction:.0%}): {int(mask[top].sum())} of the {int(mask.sum())} misaligned pairs")
    return out


def _tb(metrics: dict, method: str, k) -> dict | None:
    return metrics["traceback"].get(f"{method}_k{k}")


def traceback_findings(metrics: dict) -> list[str]:
    """Stage 9, from the trace-back metrics dict (:func:`ecif.kit.reports.traceback_metrics`)."""
    tb = metrics["traceback"]
    ks = sorted({int(key.rsplit("_k", 1)[1]) for key in tb})
    k = ks[-1]
    out = [f"{metrics['test_mispredicted']} test items are mispredicted; {metrics['traceback_items']} were traced."]
    rnd = _tb(metrics, "random", k)
    for meth, name in (("ris", "RIS"), ("is", "IS")):
        r = _tb(metrics, meth, k)
        if r is None:
            continue
        cmp = ""
        if rnd is not None:
            cmp = (f", against {_pct(rnd['improve_rate'])} and {rnd['margin_gain']:+.3f} for {k} random pairs"
                   f" ({r['margin_gain'] / rnd['margin_gain']:.0f}x the margin gain)" if rnd["margin_gain"] > 0 else
                   f", against {_pct(rnd['improve_rate'])} and {rnd['margin_gain']:+.3f} for {k} random pairs")
        out.append(f"Removing the top {k} culprits by {name} and retraining fixes {_pct(r['fix_rate'])} of the items "
                   f"and improves the margin of {_pct(r['improve_rate'])} (mean gain {r['margin_gain']:+.3f}){cmp}.")
    if rnd is not None:  # the control: how often k random removals fix an item by chance
        out.append(f"The control: removing {k} random pairs fixes {_pct(rnd['fix_rate'])} of the items.")
    out.append(f"Misaligned pairs among the traced culprits in the gallery: {metrics['gallery_misaligned_share']:.2f}.")
    return out


def exercise_traceback_misaligned(rates: pd.DataFrame) -> list[str]:
    """Exercise: misaligned pairs among the removed culprits per method and k
    (:func:`ecif.kit.reports.traceback_rates`)."""
    return [f"{meth:6s} k = {k}: {r.misaligned_removed:.2f} misaligned among the removed"
            for (meth, k), r in rates.iterrows()]


# ----------------------------------------------------------------------------- 10 summary
def summary_findings(M: dict) -> list[str]:
    """Stage 10: one sentence per earlier stage, from the metrics files ``{"ablation",
    "detection_summary", "cleaning", "traceback"}``."""
    roles = M["ablation"]["ablation_roles"]
    out = [f"Influence vs leave-one-out (Spearman): ECIF {roles['ecif']['spearman']:.3f}, positive-only "
           f"{roles['positive']['spearman']:.3f}, negative-only {roles['negative']['spearman']:.3f}."]
    winners = M["detection_summary"]["detection_winner"]
    out.append("Detection winners by AUROC: " + "; ".join(
        f"{kind} {w['auroc']} (ECIF rank {w['ecif_rank_auroc']})" for kind, w in winners.items()) + ".")
    lines = cleaning_findings(M["cleaning"])  # with reference rows: their line, then the ranking (or why none)
    out.extend(lines[:2] if "oracle" in M["cleaning"]["cleaning"] else lines[:1])
    out.extend(traceback_findings(M["traceback"])[1:2])
    return out


def exercise_hardest_kind(M: dict, method: str = "ecif") -> list[str]:
    """Exercise: ``method``'s mean AUROC per misalignment kind, hardest first."""
    sweep = M["detection_summary"]["detection_sweep"]
    vals = sorted((s[method]["auroc_mean"], kind) for kind, s in sweep.items() if method in s)
    return [f"{kind}: {method} AUROC {v:.3f}" for v, kind in vals]


def exercise_cleaning_vs_random(M: dict, method: str = "ecif") -> list[str]:
    """Exercise: is ``method``'s cleaning accuracy outside random removals' mean ± 2 std?"""
    c = M["cleaning"]["cleaning"]
    e, r = c[method]["accuracy_mean"], c["random"]
    lo, hi = r["accuracy_mean"] - 2 * r["accuracy_std"], r["accuracy_mean"] + 2 * r["accuracy_std"]
    where = "above" if e > hi else "below" if e < lo else "within"
    return [f"{method} {e:.3f} vs random {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}: {where} two standard "
            f"deviations of random removals."]
