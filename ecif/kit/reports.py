"""Report aggregation: the tables and metric dictionaries the pipeline's notebooks write.

Every function here is pure (DataFrames and dicts in, DataFrames, dicts and markdown out); the
notebooks call them and write the results. Metric keys never contain dots, because DVC
flattens nested metrics with ``.`` (``lam 0.03 -> "lam_3e-02"``, ``rate 0.1 -> "rate_10pct"``).

Wall-clock timings are volatile: a stage whose numbers are unchanged would still rewrite its
outputs (and DVC rerun everything downstream) if they held times. So timings live only in the
metrics files, under a top-level ``"time"`` group whose keys end in ``_s``; tables go through
:func:`split_timings` before they are written or shown.

Detection metrics are the four of :func:`ecif.experiments.metrics.detection_metrics`
(``DETECTION_KEYS``); "higher score = more suspicious" throughout.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DETECTION_KEYS",
    "metric_key",
    "is_timing",
    "split_timings",
    "rate_key",
    "detection_metrics_dict",
    "sweep_long_table",
    "sweep_stats",
    "sweep_winners",
    "sweep_markdown",
    "sweep_precision_curves",
    "sweep_summary",
    "role_table",
    "sensitivity_metrics",
    "sweep_table",
    "cleaning_summary",
    "curve_summary",
    "fraction_key",
    "runtime_table",
    "cleaning_metrics",
    "editing_summary",
    "traceback_rates",
    "traceback_metrics",
    "summary_sections",
    "peers_table",
    "emi_sections",
    "summary_markdown",
]

#: The detection metrics reported per method (k = number of injected pairs).
DETECTION_KEYS = ("precision_at_k", "recall_at_k", "auroc", "average_precision")


def metric_key(name: str, value) -> str:
    """A dot-free metric key for a swept value: floats in ``%.0e`` form (``lam_3e-02``),
    everything else as is (``batch_size_64``, ``batch_size_None``)."""
    return f"{name}_{value:.0e}" if isinstance(value, float) else f"{name}_{value}"


def rate_key(rate: float) -> str:
    """``"rate_10pct"`` for a noise rate of 0.1 (a dot-free metric key)."""
    return f"rate_{round(100 * rate)}pct"


def is_timing(name) -> bool:
    """A wall-clock timing: the column or key ``seconds`` or one ending in ``_s``."""
    name = str(name)
    return name == "seconds" or name.endswith("_s")


def split_timings(data, by=None):
    """Move the timings (:func:`is_timing`) out of a table or a dict, for the ``"time"`` group.

    A dict: returns ``(dict without the timing keys, {key: value} of them)``. A DataFrame:
    returns ``(table without the timing columns, totals and medians)``; a column ``x_s`` gives
    ``x_total_s`` and ``x_median_s``, a column ``seconds`` gives ``total_s`` and ``median_s``;
    with ``by`` (a column name), one such dict per group: ``{str(group): {...}}``.
    """
    if not isinstance(data, pd.DataFrame):
        return ({k: v for k, v in data.items() if not is_timing(k)},
                {str(k): float(v) for k, v in data.items() if is_timing(k)})
    columns = [c for c in data.columns if is_timing(c)]

    def aggregate(frame: pd.DataFrame) -> dict:
        out = {}
        for c in columns:
            stem = "" if c == "seconds" else str(c)[:-2] + "_"
            out[f"{stem}total_s"] = float(frame[c].sum())
            out[f"{stem}median_s"] = float(frame[c].median())
        return out

    times = aggregate(data) if by is None else {str(g): aggregate(grp) for g, grp in data.groupby(by, sort=False)}
    return data.drop(columns=columns), times


def _nan_to_zero(x) -> float:
    x = float(x)
    return 0.0 if np.isnan(x) else x


# ------------------------------------------------------------------------------ detection


def detection_metrics_dict(table: pd.DataFrame) -> dict:
    """``{method: {metric: value}}`` from a per-method table indexed by ``method`` with the
    columns :data:`DETECTION_KEYS` (as :func:`ecif.experiments.detection.detection_table`
    gives after ``set_index("method")``)."""
    missing = [k for k in DETECTION_KEYS if k not in table.columns]
    if missing:
        raise ValueError(f"the detection table lacks the column(s) {missing}.")
    return {str(m): {key: float(table.loc[m, key]) for key in DETECTION_KEYS} for m in table.index}


def sweep_long_table(cells: dict) -> pd.DataFrame:
    """One row per (kind, rate, seed, method) from ``{(kind, rate, seed): cell_metrics}``, where
    ``cell_metrics["detect"]`` is the per-method dict a detection cell writes."""
    rows = [{"kind": k, "rate": r, "seed": s, "method": method, **vals}
            for (k, r, s), m in cells.items() for method, vals in m["detect"].items()]
    if not rows:
        raise ValueError("no detection cells: run the detection_cell stages first.")
    return pd.DataFrame(rows)


def sweep_stats(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds per (kind, rate, method): columns are
    ``(metric, "mean"|"std")``; std is NaN for a single seed."""
    return long.groupby(["kind", "rate", "method"], sort=False)[list(DETECTION_KEYS)].agg(["mean", "std"])


def _pooled(long: pd.DataFrame) -> pd.DataFrame:
    return long.groupby(["kind", "method"], sort=False)[list(DETECTION_KEYS)].mean()


def sweep_winners(long: pd.DataFrame, reference: str = "ecif") -> pd.DataFrame:
    """Per kind (rates and seeds pooled): the method with the best mean AUROC and the best mean
    precision@k, and ``reference``'s AUROC and rank (1 = best, ties in reporting order)."""
    pooled = _pooled(long)
    rows = []
    for k in long["kind"].drop_duplicates():
        p = pooled.loc[k]
        order = p["auroc"].sort_values(ascending=False, kind="stable")
        rows.append({"kind": k, "winner_auroc": order.index[0], "auroc": order.iloc[0],
                     "winner_precision_at_k": p["precision_at_k"].idxmax(),
                     "precision_at_k": p["precision_at_k"].max(),
                     f"{reference}_auroc": p.loc[reference, "auroc"],
                     f"{reference}_rank": int(list(order.index).index(reference)) + 1})
    return pd.DataFrame(rows).set_index("kind")


def sweep_markdown(stats: pd.DataFrame, winners: pd.DataFrame, seeds) -> str:
    """The sweep's markdown report: mean ± std per (kind, rate, method), then the winners."""
    def fmt(mean, std):
        return f"{mean:.3f} ± {0.0 if np.isnan(std) else std:.3f}"

    lines = ["| kind | rate | method | precision@k | recall@k | AUROC | AP |", "|---|---|---|---|---|---|---|"]
    for (k, r, method), row in stats.iterrows():
        lines.append(f"| {k} | {r} | {method} | "
                     + " | ".join(fmt(row[(key, "mean")], row[(key, "std")]) for key in DETECTION_KEYS) + " |")
    lines += ["", "| kind | best AUROC | best precision@k | ECIF AUROC (rank) |", "|---|---|---|---|"]
    for k, w in winners.iterrows():
        lines.append(f"| {k} | {w.winner_auroc} ({w.auroc:.3f}) | {w.winner_precision_at_k} "
                     f"({w.precision_at_k:.3f}) | {w.ecif_auroc:.3f} ({w.ecif_rank}) |")
    return f"Detection over seeds {list(seeds)} (mean ± std)\n\n" + "\n".join(lines) + "\n"


def sweep_precision_curves(cell_scores: dict, fractions=None) -> pd.DataFrame:
    """Precision@k against ``k / number injected`` per (kind, method), mean and std over the
    cells of each kind.

    ``cell_scores`` maps ``(kind, rate, seed)`` to a cell's score table (one column per method
    plus ``misaligned``; a ``pair`` column is ignored). Returns long rows ``kind``, ``method``,
    ``k_over_injected``, ``precision`` (mean), ``std`` (0 for a single cell).
    """
    from ecif.experiments.metrics import precision_recall_curve_at_ks

    fractions = np.round(np.linspace(0.1, 2.0, 20), 2) if fractions is None else np.asarray(fractions)
    rows = []
    for (k, _r, _s), table in cell_scores.items():
        sc = table.drop(columns=[c for c in ("pair",) if c in table.columns])
        mask = sc.pop("misaligned").to_numpy().astype(bool)
        ks = np.clip(np.round(fractions * int(mask.sum())).astype(int), 1, len(mask))
        for method in sc.columns:
            prec = precision_recall_curve_at_ks(sc[method].to_numpy(), mask, ks)["precision"].to_numpy()
            rows += [{"kind": k, "method": method, "k_over_injected": f, "precision": p}
                     for f, p in zip(fractions, prec)]
    return (pd.DataFrame(rows).groupby(["kind", "method", "k_over_injected"], sort=False)["precision"]
            .agg(["mean", "std"]).reset_index().rename(columns={"mean": "precision"})
            .fillna({"std": 0.0}))


def sweep_summary(long: pd.DataFrame, kinds, rates, seeds) -> dict:
    """The metrics file of the sweep: ``detection_sweep`` (per kind and method, mean and std
    over rates and seeds), ``detection_by_rate`` (per kind, rate and method), ``detection_winner``
    and ``detection_grid``."""
    kinds, rates, seeds = list(kinds), list(rates), list(seeds)
    pooled, stats, winners = _pooled(long), sweep_stats(long), sweep_winners(long)
    several = len(seeds) * len(rates) > 1
    summary = {}
    for k in kinds:
        summary[k] = {}
        for m in pooled.loc[k].index:
            sel = long[(long.kind == k) & (long.method == m)]
            entry = {f"{key}_mean": float(pooled.loc[(k, m), key]) for key in DETECTION_KEYS}
            entry.update({f"{key}_std": float(sel[key].std(ddof=1)) if several else 0.0
                          for key in DETECTION_KEYS})
            summary[k][m] = entry
    by_rate = {k: {rate_key(r): {m: {f"{key}_{stat}": _nan_to_zero(stats.loc[(k, r, m), (key, stat)])
                                     for key in DETECTION_KEYS for stat in ("mean", "std")}
                                 for m in stats.loc[(k, r)].index} for r in rates} for k in kinds}
    return {
        "detection_sweep": summary,
        "detection_by_rate": by_rate,
        "detection_winner": {k: {"auroc": w.winner_auroc, "precision_at_k": w.winner_precision_at_k,
                                 "ecif_rank_auroc": w.ecif_rank} for k, w in winners.iterrows()},
        "detection_grid": {"n_cells": len(kinds) * len(rates) * len(seeds), "kinds": kinds,
                           "rates": rates, "seeds": seeds},
    }


# --------------------------------------------------------------------------- ablation


def role_table(loo: pd.DataFrame, scores: pd.DataFrame, variants=("positive", "negative", "ecif")) -> dict:
    """Role ablation: per variant, agreement with leave-one-out (``pearson``, ``spearman`` of the
    predicted column against ``actual`` in ``loo``) and detection (``auroc``, ``precision_at_k``
    of the score column against ``misaligned`` in ``scores``, k = number misaligned)."""
    from ecif.experiments.metrics import auroc, loo_agreement, precision_at_k

    mask = scores["misaligned"].to_numpy().astype(bool)
    out = {}
    for v in variants:
        agree = loo_agreement(loo[v].to_numpy(), loo["actual"].to_numpy())
        out[v] = {"pearson": agree["pearson"], "spearman": agree["spearman"],
                  "auroc": auroc(scores[v].to_numpy(), mask),
                  "precision_at_k": precision_at_k(scores[v].to_numpy(), mask, int(mask.sum()))}
    return out


def sensitivity_metrics(table: pd.DataFrame, column: str, extra=()) -> dict:
    """``{metric_key(column, value): {variant: {...}, "min_eigenvalue": ...}}`` from a sweep
    table with one row per (value, variant) and the columns ``variant``, ``min_eigenvalue``,
    ``pearson``, ``spearman``, ``auroc``, ``precision_at_k`` (plus ``extra`` columns)."""
    out = {}
    for value, grp in table.groupby(column, sort=False):
        entry = {r.variant: {"pearson": r.pearson, "spearman": r.spearman, "auroc": r.auroc,
                             "precision_at_k": r.precision_at_k, **{e: getattr(r, e) for e in extra}}
                 for r in grp.itertuples()}
        entry["min_eigenvalue"] = float(grp["min_eigenvalue"].iloc[0])
        out[metric_key(column, value)] = entry
    return out


def sweep_table(tables: dict) -> pd.DataFrame:
    """The sweeps stacked for one plot file: ``{sweep_name: table}`` where each table has a
    column named like the sweep; columns ``sweep``, ``value``, ``variant``, ``min_eigenvalue``,
    ``pearson``, ``spearman``, ``auroc``, ``precision_at_k``."""
    long = pd.concat([t.assign(sweep=name, value=t[name]) for name, t in tables.items()], ignore_index=True)
    return long[["sweep", "value", "variant", "min_eigenvalue", "pearson", "spearman", "auroc", "precision_at_k"]]


# ---------------------------------------------------------------- cleaning and editing


def cleaning_summary(clean: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of ``accuracy`` and ``n_misaligned_removed`` per method."""
    return clean.groupby("method", sort=False)[["accuracy", "n_misaligned_removed"]].agg(["mean", "std"])


def fraction_key(fraction: float) -> str:
    """``"frac_10pct"`` for a removal fraction of 0.1 (a dot-free metric key)."""
    return f"frac_{round(100 * fraction)}pct"


def curve_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """The removal-fraction curve (:func:`ecif.experiments.cleaning.cleaning_curve`) per
    (fraction, method): ``accuracy_mean``, ``accuracy_std`` (over the random seeds; 0 for one
    run), ``n_removed`` and ``n_misaligned_removed`` (means); no timings."""
    g = curve.groupby(["fraction", "method"], sort=False)
    out = pd.DataFrame({"accuracy_mean": g["accuracy"].mean(), "accuracy_std": g["accuracy"].std().fillna(0.0),
                        "n_removed": g["n_removed"].mean(), "n_misaligned_removed": g["n_misaligned_removed"].mean()})
    return out.reset_index()


#: The editing table's columns averaged per (set kind, variant); no timings (see split_timings).
#: The cold-retraining columns only when the table has them (``edit_vs_retrain(cold=True)``).
EDIT_COLUMNS = ("acc_edited", "acc_retrained", "predicted_val_change", "edited_val_change",
                "actual_val_change", "shift_rel_error", "acc_cold_retrained", "cold_warm_distance")


def editing_summary(edit: pd.DataFrame) -> pd.DataFrame:
    """Means per (set kind, variant): ``random_3`` and ``random_4`` pool as ``random``."""
    kind = edit["set"].str.replace(r"_\d+$", "", regex=True)
    cols = [c for c in EDIT_COLUMNS if c in edit.columns]
    return edit.assign(kind=kind).groupby(["kind", "variant"], sort=False)[cols].mean()


def cleaning_metrics(summary: pd.DataFrame, edit_summary: pd.DataFrame, n_removed: int,
                     separation: dict | None = None, curve: pd.DataFrame | None = None) -> dict:
    """The cleaning stage's metrics file (without timings). ``separation``
    (:func:`ecif.experiments.cleaning.separation`) adds ``cleaning.gap``, ``cleaning.random_std``
    and ``cleaning.separable``; ``curve`` (:func:`curve_summary`) adds
    ``cleaning_curve.<frac_Npct>.<method>`` = the mean accuracy."""
    out = {
        "cleaning": {m: {"accuracy_mean": float(summary.loc[m, ("accuracy", "mean")]),
                         "accuracy_std": float(np.nan_to_num(summary.loc[m, ("accuracy", "std")])),
                         "misaligned_removed": float(summary.loc[m, ("n_misaligned_removed", "mean")])}
                     for m in summary.index},
        "cleaning_n_removed": int(n_removed),
        "editing": {f"{k}_{v}": {c: float(x) for c, x in row.items()} for (k, v), row in edit_summary.iterrows()},
    }
    if separation is not None:
        out["cleaning"].update({"gap": float(separation["gap"]), "random_std": _nan_to_zero(separation["random_std"]),
                                "separable": bool(separation["separable"])})
    if curve is not None:
        out["cleaning_curve"] = {fraction_key(f): {str(r.method): float(r.accuracy_mean) for r in grp.itertuples()}
                                 for f, grp in curve.groupby("fraction", sort=True)}
    return out


def runtime_table(time_group: dict) -> pd.DataFrame:
    """The paper's runtime table (Table 2) from a cleaning metrics file's ``time`` group: per edit
    variant the median wall time of the ECIF edit, of the warm retraining (from ``theta_hat``)
    and of the cold retraining (from ``theta0``, when measured), and the shared one-off Hessian
    factorisation, in seconds."""
    rows = {}
    for variant, t in time_group.get("editing", {}).items():
        rows[variant] = {"edit_median_s": t.get("edit_median_s", np.nan),
                         "warm_retrain_median_s": t.get("retrain_median_s", np.nan),
                         "cold_retrain_median_s": t.get("cold_retrain_median_s", np.nan),
                         "hessian_factorise_s": time_group.get("hessian_factorise_s", np.nan)}
    return pd.DataFrame(rows).T


# -------------------------------------------------------------------------- trace-back


def traceback_rates(cf: pd.DataFrame) -> pd.DataFrame:
    """Per (method, k): the share of items fixed and improved, the mean number of misaligned
    pairs among the removed, and the mean margin gain."""
    rates = cf.groupby(["method", "k"])[["fixed", "improved", "misaligned_removed"]].mean()
    rates["margin_gain"] = cf.assign(g=cf.margin_after - cf.margin_before).groupby(["method", "k"])["g"].mean()
    return rates


def traceback_metrics(rates: pd.DataFrame, n_items: int, n_wrong: int, gallery_share: float) -> dict:
    """The trace-back stage's metrics file."""
    return {
        "traceback": {f"{meth}_k{k}": {"fix_rate": float(r.fixed), "improve_rate": float(r.improved),
                                       "margin_gain": float(r.margin_gain),
                                       "misaligned_removed": float(r.misaligned_removed)}
                      for (meth, k), r in rates.iterrows()},
        "traceback_items": int(n_items), "test_mispredicted": int(n_wrong),
        "gallery_misaligned_share": float(gallery_share),
    }


# ----------------------------------------------------------------------------- summary


def summary_sections(metrics: dict) -> dict[str, pd.DataFrame]:
    """The summary report's tables, titled, from the stages' metrics files
    (``{"ablation": {...}, "detection_summary": {...}, "cleaning": {...}, "traceback": {...}}``,
    optionally ``"peers"``: :func:`peers_table`)."""
    out = {"LOO agreement and role ablation": pd.DataFrame(metrics["ablation"]["ablation_roles"]).T}
    det = metrics["detection_summary"]["detection_sweep"]
    out["Detection AUROC (mean over seeds)"] = pd.DataFrame(
        {k: {m: v["auroc_mean"] for m, v in d.items()} for k, d in det.items()})
    out["Detection precision@k (mean over seeds)"] = pd.DataFrame(
        {k: {m: v["precision_at_k_mean"] for m, v in d.items()} for k, d in det.items()})
    by_rate = metrics["detection_summary"].get("detection_by_rate", {})
    out["Detection AUROC by noise rate (mean ± std over seeds)"] = pd.DataFrame(
        {(k, r): {m: f"{v['auroc_mean']:.3f} ± {v['auroc_std']:.3f}" for m, v in d.items()}
         for k, rs in by_rate.items() for r, d in rs.items()}).T
    out["Winner per misalignment kind"] = pd.DataFrame(metrics["detection_summary"]["detection_winner"]).T
    sens = metrics["ablation"]["sensitivity"]
    for sweep, title in (("damping", "damping mu"), ("lam", "regularisation lam"), ("batch_size", "batch size")):
        rows = {}
        for setting, vals in sens[sweep].items():
            rows[setting] = {"min_eigenvalue": vals["min_eigenvalue"],
                             **{f"{v}_{key}": vals[v][key] for v in ("ecif", "positive") for key in ("spearman", "auroc")},
                             **{key: vals["ecif"][key] for key in ("is_spearman_vs_first", "loo_spearman_vs_first",
                                                                   "neg_to_pos") if key in vals["ecif"]}}
        out[f"Sensitivity to {title}"] = pd.DataFrame(rows).T
    out["Table 1: cleaning"] = pd.DataFrame({m: v for m, v in metrics["cleaning"]["cleaning"].items()
                                             if isinstance(v, dict)}).T
    scalars = {k: v for k, v in metrics["cleaning"]["cleaning"].items() if not isinstance(v, dict)}
    if scalars:  # cleaning.gap, random_std, separable (issue 13)
        out["Table 1: oracle gap against the random deletions' spread"] = pd.DataFrame([scalars], index=["cleaning"])
    out["Table 2: edited vs retrained"] = pd.DataFrame(metrics["cleaning"]["editing"]).T
    out["Trace-back: fix rate"] = pd.DataFrame(metrics["traceback"]["traceback"]).T
    if "peers" in metrics:  # stage peers (metrics/peers.json)
        out["Peers against leave-one-out retraining"] = peers_table(metrics["peers"])
    return out


#: The columns of the peers table, in order (the keys ``peers.<name>.<column>``).
PEER_COLUMNS = ("pearson", "spearman", "pearson_clean", "spearman_clean", "auroc")


def peers_table(peers_metrics: dict) -> pd.DataFrame:
    """One row per peer library (``peers.<name>``) of ``metrics/peers.json``: Pearson and
    Spearman correlation with the leave-one-out changes on all sampled pairs and on the clean
    ones only, and detection AUROC (NaN where a peer's entry lacks a column); the ``time`` group
    is left out (a rerun would change it)."""
    rows = {name: {c: vals.get(c, np.nan) for c in PEER_COLUMNS}
            for name, vals in peers_metrics.get("peers", {}).items() if isinstance(vals, dict)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(PEER_COLUMNS)).astype(float)
    table.index.name = "peer"
    return table


#: Experiment B columns of the EMI summary table: (metric, decimals).
EMI_B_COLUMNS = (("accuracy", 3), ("emi", 1), ("precision_ecif", 3), ("precision_random", 3),
                 ("emi_after_ecif", 1), ("emi_after_random", 1), ("emi_after_oracle", 1))


def _parse_emi_cell(key: str) -> tuple[str, int]:
    """``("shuffle", 5)`` from the metric key ``shuffle_r05`` (:func:`ecif.kit.emi_stage.rate_key`)."""
    kind, _, rate = key.rpartition("_r")
    return kind, int(rate)


def emi_sections(emi_metrics: dict) -> dict[str, pd.DataFrame]:
    """The EMI stage's tables, titled, from the ``emi`` group of ``metrics/emi.json``.

    * experiment A: per correlated pair (EMID vs bound, EMID vs accuracy drop, bound vs accuracy
      drop) the Pearson and Spearman correlation across scenarios with their bootstrap intervals;
    * experiment B: per (kind, rate %) the number of noise seeds and ``mean ± std`` over them of
      the test accuracy, the EMI, ECIF's and random precision@k and the EMI after removing ECIF's
      top-k, a random k or the oracle set ("–" where a cell has no such value, e.g. detection at
      rate 0). A cell written before the seed summary (plain ``emi`` instead of ``emi_mean``)
      is read as one seed."""
    shift = emi_metrics.get("shift", {})
    corr = {k[len("corr_"):]: v for k, v in shift.items() if k.startswith("corr_") and isinstance(v, dict)}
    cols = ["pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo", "spearman_hi"]
    a = pd.DataFrame(corr).T.reindex(columns=cols) if corr else pd.DataFrame(columns=cols)
    a.index.name = "pair"
    title_a = (f"EMI A: EMID, bound and accuracy drop across {shift.get('n_scenarios', '?')} shift scenarios "
               f"({shift.get('n_seeds', '?')} seeds, bootstrap intervals)")
    rows = {}
    for key, cell in sorted(emi_metrics.get("misalignment", {}).items(), key=lambda kv: _parse_emi_cell(kv[0])):
        row = {"n_seeds": int(cell.get("n_seeds", 1))}
        for col, dec in EMI_B_COLUMNS:
            mean = cell.get(f"{col}_mean", cell.get(col))
            std = cell.get(f"{col}_std", 0.0 if col in cell else None)
            row[col] = "–" if mean is None else f"{mean:.{dec}f} ± {std:.{dec}f}"
        rows[_parse_emi_cell(key)] = row
    b = pd.DataFrame(rows).T
    if len(b):
        b.index.names = ["kind", "rate %"]
    return {title_a: a,
            "EMI B: EMI vs misalignment rate and recovery after removal (mean ± std over noise seeds)": b}


def summary_markdown(sections: dict[str, pd.DataFrame]) -> str:
    """The summary report as markdown: one ``##`` section per table, floats to 3 decimals."""
    body = "\n".join(f"## {title}\n\n" + frame.to_markdown(floatfmt=".3f") + "\n"
                     for title, frame in sections.items())
    return "# ECIF kit: summary tables\n\n" + body
