"""The check cells of the notebooks' exercises that recompute something with the kit's math.

Each ``exercise_*`` helper runs the cheap variant an exercise asks about (seconds: no retraining:
the saved Hessian, the saved scores, one edit) and returns the comparison as sentences for
:func:`ecif.kit.findings.show`. They live apart from :mod:`ecif.kit.findings` (sentences from
numbers, no math) so that the early stages, whose notebooks use only the findings, do not depend on
``ecif/core`` and ``ecif/experiments``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def exercise_damping(fitted, loo: pd.DataFrame, mu: float, stats: dict) -> list[str]:
    """Exercise: ECIF with ``(H + μI)⁻¹`` (the saved Hessian of ``fitted``, no recomputation)
    against the leave-one-out truth ``loo`` (``pair``, ``actual``), next to the undamped
    ``stats["ecif"]`` (``spearman``, ``pearson``)."""
    from ecif.core.evaluate import validation_gradient
    from ecif.experiments.sensitivity import score_rows
    g = validation_gradient(fitted.problem.val, fitted.theta_hat)
    row = score_rows(fitted.engine(damping=mu), g, loo=loo, mask=fitted.problem.mask, variants=("ecif",))[0]
    return [f"ECIF vs leave-one-out: Spearman {stats['ecif']['spearman']:.3f} without damping, {row['spearman']:.3f} "
            f"with μ = {mu:g}; Pearson {stats['ecif']['pearson']:.3f} -> {row['pearson']:.3f}."]


def exercise_k(scores: dict, mask, factor: float, methods=("ecif", "cosine")) -> list[str]:
    """Exercise: precision and recall at ``k`` and at ``factor × k`` (k = number misaligned)."""
    from ecif.experiments.detection import detection_table
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    k2 = max(1, int(round(factor * k)))
    a = detection_table(scores, mask).set_index("method")
    b = detection_table(scores, mask, k=k2).set_index("method")
    return [f"{m:8s} k = {k}: precision {a.loc[m, 'precision_at_k']:.3f}, recall {a.loc[m, 'recall_at_k']:.3f};  "
            f"k = {k2}: precision {b.loc[m, 'precision_at_k']:.3f}, recall {b.loc[m, 'recall_at_k']:.3f}"
            for m in methods if m in a.index]


def exercise_random(mask, seeds=(1, 2, 3)) -> list[str]:
    """Exercise: random scores under other seeds: AUROC near 0.5, precision@k near the base rate."""
    from ecif.experiments.metrics import auroc, precision_at_k
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    rows = [(auroc(s, mask), precision_at_k(s, mask, k))
            for s in (np.random.default_rng(seed).random(len(mask)) for seed in seeds)]
    au, pr = np.array(rows).T
    return [f"random scores, seeds {list(seeds)}: AUROC {au.mean():.3f} ± {au.std():.3f}, precision@k "
            f"{pr.mean():.3f} ± {pr.std():.3f} (base rate {k / len(mask):.3f})."]


# ------------------------------------------------------------------------------- 06 sweep
def exercise_sweep_subset(long: pd.DataFrame, **select) -> list[str]:
    """Exercise: the winners (:func:`ecif.kit.reports.sweep_winners`) on a subset of the sweep's
    long table: ``rate=0.1`` keeps one rate, ``exclude=["cosine"]`` drops methods."""
    from ecif.kit.reports import sweep_winners
    exclude = select.pop("exclude", ())
    part = long[~long["method"].isin(exclude)]
    for col, val in select.items():
        part = part[part[col] == val]
    full, sub = sweep_winners(long), sweep_winners(part)
    what = ", ".join([f"{c} = {v}" for c, v in select.items()] + [f"{', '.join(exclude)} left out"] * bool(exclude))
    return [f"{kind}: winner by AUROC {full.loc[kind, 'winner_auroc']} ({full.loc[kind, 'auroc']:.3f}) on the whole "
            f"sweep, {sub.loc[kind, 'winner_auroc']} ({sub.loc[kind, 'auroc']:.3f}) with {what}" for kind in sub.index]


# ---------------------------------------------------------------------------- 07 ablation
def exercise_half_set(engine, val, scores, m: int, variant: str = "ecif") -> list[str]:
    """Exercise: the predicted validation-loss change of removing the ``m`` highest-scoring pairs,
    and of each half of that set (first order: the prediction is additive over removed pairs)."""
    from ecif.core.evaluate import validation_gradient
    g = validation_gradient(val, engine.theta_hat)
    remove = np.argsort(-np.asarray(scores), kind="stable")[:m]
    full = engine.predicted_change(g, remove, variant)
    half = engine.predicted_change(g, remove[: m // 2], variant)
    rest = engine.predicted_change(g, remove[m // 2:], variant)
    return [f"predicted change: whole set ({m} pairs) {full:+.4f}; first half {half:+.4f}; second half "
            f"{rest:+.4f}; halves summed {half + rest:+.4f}."]


# --------------------------------------------------------------------------- 09 traceback
def exercise_culprit_overlap(engine, test, item: int, k: int, scorer=None) -> list[str]:
    """Exercise: how many of the top-``k`` culprits of one item RIS and IS share. ``scorer``: the
    stage's :class:`~ecif.experiments.misprediction.CulpritScorer` of ``engine`` (variant ecif),
    to reuse its per-pair part; ``None`` builds one."""
    from ecif.experiments.misprediction import CulpritScorer
    g = test.subset([int(item)]).item_gradients(engine.objective.param, engine.theta_hat)[:, 0]
    s = (scorer or CulpritScorer(engine))(g)
    top = {m: set(np.argsort(-v, kind="stable")[:k].tolist()) for m, v in s.items()}
    return [f"test item {int(item)}: the top {k} culprits by RIS and by IS share {len(top['ris'] & top['is'])} of them."]


# -------------------------------------------------------------------------------- 11 emi
def exercise_emi_modality(grid: pd.DataFrame, n_boot: int = 200) -> list[str]:
    """Exercise: experiment A's correlations within one modality at a time: Spearman of EMID and of
    the bound against the accuracy drop over the per-scenario means of ``grid`` (rows: scenario,
    and shift seed if any), with percentile bootstrap intervals over scenarios
    (:func:`ecif.experiments.emi_study.bootstrap_correlation`, seed 0); a modality with fewer than 3
    scenarios is named, not correlated."""
    from ecif.experiments.emi_study import bootstrap_correlation
    out = []
    for modality in ["all"] + list(dict.fromkeys(grid["modality"])):
        part = grid if modality == "all" else grid[grid["modality"] == modality]
        means = part.groupby("scenario", sort=False)[["emid", "bound", "acc_drop"]].mean()
        n = len(means)
        if n < 3:
            out.append(f"{modality} ({n} scenario{'s' * (n != 1)}): too few for a correlation.")
            continue
        r = {c: bootstrap_correlation(means[c], means["acc_drop"], n_boot) for c in ("emid", "bound")}
        out.append(f"{modality} ({n} scenarios): Spearman with the accuracy drop, EMID "
                   f"{r['emid']['spearman']:.3f} [{r['emid']['spearman_lo']:.3f}, {r['emid']['spearman_hi']:.3f}], "
                   f"bound {r['bound']['spearman']:.3f} [{r['bound']['spearman_lo']:.3f}, "
                   f"{r['bound']['spearman_hi']:.3f}].")
    return out


def exercise_emi_one_seed(models: pd.DataFrame, seed: int) -> list[str]:
    """Exercise: what noise seed ``seed`` alone would have said about experiment B. Per kind and
    rate > 0, the EMI change from the clean fit (rate 0, same seed) of that one seed, against the
    mean ± std (ddof 1) of the change over every seed of ``models``; then how many cells one seed
    calls a fall and in how many the fall over all seeds exceeds one std."""
    seeds = sorted(models["noise_seed"].unique())
    if seed not in seeds:
        raise ValueError(f"noise seed {seed} was not run (have {seeds})")
    out, falls, real = [], 0, 0
    for kind, part in models.groupby("kind", sort=False):
        clean = part[part["rate"] == 0].set_index("noise_seed")["emi"]
        cells = []
        for rate, cell in part[part["rate"] > 0].groupby("rate"):
            d = cell.set_index("noise_seed")["emi"] - clean
            mean, std = float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0
            one = float(d.loc[seed])
            falls += one < 0
            real += bool(one < 0 and mean < 0 and -mean > std)
            cells.append(f"{rate:.0%} {one:+.2f} (all {len(d)}: {mean:+.2f} ± {std:.2f})")
        out.append(f"{kind}, EMI change from the clean fit, seed {seed} alone: " + "; ".join(cells) + ".")
    out.append(f"Seed {seed} alone shows a fall of EMI in {falls} cells; over all {len(seeds)} seeds the "
               f"fall exceeds one std in {real} of them.")
    return out


def exercise_relabel_merge(ds, attribute: str = "color", source: str = "red", target: str = "blue") -> list[str]:
    """Exercise: Limit 2 with a relabelling that is *not* a bijection. On the test split of ``ds``
    the reference captions get ``attribute`` swapped (``source`` <-> ``target``, a bijection) or
    merged (``source`` -> ``target``); per case the share of captions unchanged and the discrete
    EMI, ``MI(attributes; relabelled) - MI(attributes; clean)`` (nats, exact)."""
    from ecif.experiments.emi import discrete_mi
    test, spec = ds["test"], ds.spec
    attrs = {k: np.asarray(v) for k, v in test.attributes.items()}
    names = sorted(k for k in attrs if k != "template")
    key = np.array(["|".join(str(attrs[a][i]) for a in names) for i in range(len(attrs[names[0]]))])
    clean = np.asarray(spec.render(attrs))
    codes = list(spec.values[attribute])
    i, j = codes.index(source), codes.index(target)
    out = []
    for name, mapping in (("swap", {i: j, j: i}), ("merge", {i: j})):
        mapped = np.array([mapping.get(int(c), int(c)) for c in attrs[attribute]])
        relabelled = np.asarray(spec.render({**attrs, attribute: mapped}))
        out.append(f"{name} ({source} {'<->' if name == 'swap' else '->'} {target}): "
                   f"{np.mean(relabelled == clean):.1%} of the captions unchanged, discrete EMI "
                   f"{discrete_mi(key, relabelled) - discrete_mi(key, clean):+.4f} nats.")
    return out


def exercise_detect_vs_agree(stats: dict) -> list[str]:
    """Exercise (stage 12): is the method that detects misaligned pairs best (largest ``auroc``)
    also the one that agrees best with retraining (largest ``pearson``, and on clean pairs
    ``pearson_clean``)? ``stats``: ``{method: {"auroc", "pearson", "pearson_clean", ...}}``."""
    t = pd.DataFrame(stats).T[["auroc", "pearson", "pearson_clean"]].astype(float)
    best = {c: t[c].idxmax() for c in t.columns}
    same = "the same method" if best["auroc"] == best["pearson"] else "different methods"
    return [f"best detector (AUROC): {best['auroc']} ({t.loc[best['auroc'], 'auroc']:.3f}); best agreement with "
            f"retraining (Pearson): {best['pearson']} ({t.loc[best['pearson'], 'pearson']:.3f}); on clean pairs: "
            f"{best['pearson_clean']} ({t.loc[best['pearson_clean'], 'pearson_clean']:.3f}). Detection and "
            f"agreement pick {same}."]


def exercise_peer_matches_positive(scores: dict, peer: str = "dattri_cg") -> list[str]:
    """Exercise (stage 12): how close the scores of ``peer`` (an influence function of the pair's
    own loss terms) come to the kit's ``positive`` variant: the largest absolute difference over
    all pairs relative to the largest ``|positive|``, and their Pearson."""
    if peer not in scores:
        return [f"{peer} did not run here (peers.methods or its library): nothing to compare."]
    a, b = np.asarray(scores["positive"], dtype=float), np.asarray(scores[peer], dtype=float)
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    return [f"{peer} against the kit's `positive` over {len(a)} pairs: largest difference {rel:.2e} of the largest "
            f"score, Pearson {np.corrcoef(a, b)[0, 1]:.6f}."]


def exercise_clean_pairs_by_batching(loo: pd.DataFrame, variants=("positive", "ecif")) -> list[str]:
    """Exercise (stage 14): :func:`ecif.kit.findings.exercise_clean_only` per batching (column
    ``batching`` of the stage's leave-one-out table) and variant: does ECIF's lead over
    ``positive`` on clean pairs survive hard-negative batching?"""
    from ecif.kit.findings import exercise_clean_only
    out = []
    for batching, part in loo.groupby("batching", sort=False):
        for v in variants:
            out += [f"{batching}, {v}: {line}" for line in exercise_clean_only(part, v)[:2]]
    return out


def exercise_negative_share_by_group(loo: pd.DataFrame) -> list[str]:
    """Exercise (stage 14): the negative term's share ``||IS_neg|| / ||IS_pos||`` (columns
    ``negative``, ``positive``) per batching, over the clean and over the misaligned pairs of the
    leave-one-out sample apart."""
    out = []
    for (batching, bad), part in loo.groupby(["batching", "misaligned"], sort=False):
        share = np.linalg.norm(part["negative"]) / np.linalg.norm(part["positive"])
        out.append(f"{batching}, {'misaligned' if bad else 'clean'} pairs ({len(part)}): ||IS_neg|| / ||IS_pos|| = {share:.3f}")
    return out


def exercise_edit_layers(study: dict) -> list[str]:
    """Exercise (stage 13): per restoration (single layers, windows) of ``study``, the text layer
    whose MLP outputs at the constraint's tokens bring back the most (largest mean NIE)."""
    from ecif.kit.tracing_report import constraint_mlp_trace
    r = constraint_mlp_trace(study)
    return [f"{restore}: text layer {int(g.loc[g['nie'].idxmax(), 'layer'])} (NIE {g['nie'].max():.3f})"
            for restore, g in r.groupby("restore")]


def exercise_adapted_peak(block: dict | None) -> list[str]:
    """Exercise (stage 13): per tower, is the layer where the swap fit's trace differs most from the
    clean fit's (:func:`ecif.experiments.trace_contrast.largest_difference`, attention and MLP
    together) one of the layers the block-mode fine-tune adapted (``block["adapted"]``)?"""
    if block is None:
        return ["The block fits are switched off (tracing.block_fits: false): set it to true and rerun the stage."]
    from ecif.experiments.trace_contrast import largest_difference
    peaks = largest_difference(block["contrast"].assign(kind="any"))
    return [f"{row.tower} tower: largest difference at layer {int(row.layer)} ({row.diff:+.4f}), "
            f"{'an adapted' if int(row.layer) in block['adapted'].get(row.tower, []) else 'a frozen'} layer "
            f"(adapted: {block['adapted'].get(row.tower, [])})." for row in peaks.itertuples()]
