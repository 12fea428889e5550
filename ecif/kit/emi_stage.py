"""Glue of the ``emi`` stage (notebook ``11_emi``): the two experiments as calls, tables out.

* :func:`shift_experiment` (experiment A): the model fine-tuned on clean pairs, the clean test
  split as P, every shift scenario as Q, for several shift seeds; EMID, its bound and the
  correlations across scenarios.
* :func:`misalignment_experiment` (experiment B): one fit per (misalignment kind, rate, noise
  seed) through :func:`ecif.kit.problem.fit_corrupted`; the model's EMI on the clean test split,
  ECIF's detection precision@k (k = number injected) on its train split, and the EMI after
  refitting without ECIF's top-k, a random k and the oracle set (the misaligned pairs); plus what
  the bound's input terms and the pair-level MI see of the corrupted *training* pairs.
* :func:`seed_summary` reduces experiment B over the noise seeds (mean, std, min, max per
  (kind, rate)); :func:`metrics` shapes both experiments into the ``emi`` metrics (keys without
  dots, seed means and stds); :func:`findings` states the results as sentences computed from the
  numbers (the notebook prints them; nothing measured is written by hand).

The estimators and the dual-encoder mapping are in :mod:`ecif.experiments.emi` and
:mod:`ecif.experiments.emi_study`.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd

from ecif.experiments import emi_study as S
from ecif.kit.plotting import METHOD_COLOURS


def _kind(kind: str) -> tuple[str, bool]:
    return ("attribute_swap", True) if kind == "systematic_swap" else (kind, False)


def rate_key(kind: str, rate: float) -> str:
    """Metric-key name of a cell, without dots: ``shuffle_r05`` for 5 %."""
    return f"{kind}_r{int(round(rate * 100)):02d}"


def setup(dataset: str, data_root: str, encoder_dir: str, embedder: str = "fixed", pool: int = 4,
          ridge: float = 1e-2, encoder: str = "embedded", device: str = "cpu"):
    """Data set, embedder and the shared CLUB estimator (fitted on the clean pretrain split)."""
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder

    ds = load_dataset(dataset, root=data_root)
    model, tokenizer, _ = load_encoder(encoder, encoder_dir, device=device)
    emb = S.Embedder(model, tokenizer, mode=embedder, pool=pool)
    q = S.fit_reference_estimator(emb, ds["pretrain"], ridge=ridge)
    return ds, emb, q


def fit_model(dataset, data_root, encoder_dir, kind: str, rate: float, noise_seed: int, fit_kw: dict):
    """``(fitted, info)`` of one (kind, rate) cell (features in a temporary folder); ``fit_kw``
    are the fields of :class:`~ecif.kit.problem.FitSettings` (the ``finetune`` group), plus
    ``encoder`` and ``device`` (``common.encoder``, ``common.device``; default ``embedded``, ``cpu``)."""
    from ecif.kit.problem import FitSettings, fit_corrupted

    noise_kind, systematic = _kind(kind)
    fit_kw = dict(fit_kw)
    encoder = fit_kw.pop("encoder", "embedded")  # common.encoder and common.device: not fit settings
    device = fit_kw.pop("device", "cpu")
    with tempfile.TemporaryDirectory() as fd:
        fitted, info = fit_corrupted(dataset, data_root, encoder_dir, fd, kind=noise_kind, rate=rate,
                                     noise_seed=noise_seed, systematic=systematic, settings=FitSettings(**fit_kw),
                                     encoder=encoder, device=device)
    return fitted, info


def shift_experiment(ds, emb, q, fitted, scenarios, seeds, n_boot: int = 1000, form: str = "scale_adjusted",
                     ridge: float = 1e-2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Experiment A: ``(grid, correlations)`` (see :func:`ecif.experiments.emi_study.run_shift_grid`
    and :func:`~ecif.experiments.emi_study.correlation_table`)."""
    grid = S.run_shift_grid(emb, ds["test"], fitted.problem.param, fitted.theta_hat, scenarios, seeds,
                            club_kw={"ridge": ridge}, form=form, estimator=q,
                            centring=fitted.problem.centring)
    corr = S.correlation_table(grid, n_boot=n_boot, seed=0)
    return grid, corr


def misalignment_experiment(ds, emb, q, data_root: str, encoder_dir: str, kinds, rates, noise_seeds,
                            fit_kw: dict, seed: int = 0, ridge: float = 1e-2, clean_fit=None
                            ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Experiment B, once per noise seed (which pairs are corrupted). Returns
    ``(models, marginals, fits)``: one row per (kind, rate, noise_seed) with the model's test
    ``emi``, ``accuracy``, ``dmi_emi``, ``precision_<m>`` / ``auroc_<m>`` (k = number injected) for
    ``m`` in ecif and random, and ``emi_after_<set>`` / ``accuracy_after_<set>`` /
    ``misaligned_removed_<set>`` for the removal sets ecif, random, oracle; one row per
    (kind, rate > 0, noise_seed) of :func:`~ecif.experiments.emi_study.marginal_check` on the train
    split; ``fits``: (kind, rate, noise_seed) -> the fit. The clean fit (rate 0) does not depend on
    the noise seed: it is fitted once and shared by every kind and seed (its spread is 0)."""
    from ecif.core.evaluate import validation_gradient
    from ecif.data.noise import inject
    from ecif.experiments import detection

    test = S.encode_set(emb, ds["test"])
    rows, marg, fits = [], [], {}
    for noise_seed in noise_seeds:
        for kind in kinds:
            for rate in rates:
                if rate == 0 and clean_fit is None:
                    clean_fit, _ = fit_model(ds.name, data_root, encoder_dir, kind, 0.0, noise_seed, fit_kw)
                if rate == 0:
                    fitted = clean_fit
                else:
                    fitted, _ = fit_model(ds.name, data_root, encoder_dir, kind, rate, noise_seed, fit_kw)
                fits[(kind, rate, noise_seed)] = fitted
                prob, theta = fitted.problem, fitted.theta_hat
                ev = S.evaluate(test, S.respond(prob.param, theta, test, prob.centring, emb), q=q)
                row = {"kind": kind, "rate": rate, "noise_seed": int(noise_seed),
                       "n_misaligned": int(prob.mask.sum()), "emi": ev["emi"], "accuracy": ev["accuracy"],
                       "dmi_emi": ev["dmi_model"] - ev["dmi_reference"]}
                if prob.mask.any():
                    engine = fitted.engine()
                    scores = detection.detection_scores(engine, validation_gradient(prob.val, theta),
                                                        methods=("ecif", "random"), seed=seed)
                    table = detection.detection_table(scores, prob.mask).set_index("method")
                    for m in ("ecif", "random"):
                        row[f"precision_{m}"] = float(table.loc[m, "precision_at_k"])
                        row[f"auroc_{m}"] = float(table.loc[m, "auroc"])
                    refits = S.removal_refits(prob.objective, theta, scores["ecif"], prob.mask, seed=seed,
                                              preconditioner=engine.solver)
                    for name, (idx, th) in refits.items():
                        e2 = S.evaluate(test, S.respond(prob.param, th, test, prob.centring, emb), q=q)
                        row[f"emi_after_{name}"] = e2["emi"]
                        row[f"accuracy_after_{name}"] = e2["accuracy"]
                        row[f"misaligned_removed_{name}"] = int(prob.mask[idx].sum())
                    noise_kind, systematic = _kind(kind)
                    corr = inject(ds["train"], noise_kind, rate, noise_seed, systematic=systematic)
                    n = len(prob.mask)
                    train = ds["train"].subset(np.arange(n))
                    marg.append({"kind": kind, "rate": rate, "noise_seed": int(noise_seed),
                                 **S.marginal_check(emb, train, corr.captions[:n], {"ridge": ridge, "folds": 2}, q)})
                rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(marg), fits


#: The statistics :func:`seed_summary` gives per column.
SEED_STATS = ("mean", "std", "min", "max")


#: the experiment-B columns the notebook shows (each with its seed statistics)
SHOWN = ("emi", "accuracy", "precision_ecif", "emi_after_ecif", "emi_after_random", "emi_after_oracle")


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The shown part of :func:`seed_summary`: ``n_seeds`` and the seed statistics of :data:`SHOWN`,
    indexed by (kind, rate)."""
    cols = ["n_seeds"] + [f"{c}_{s}" for c in SHOWN for s in SEED_STATS if f"{c}_{s}" in summary]
    return summary.set_index(["kind", "rate"])[cols]


def colour_relabelling(emb, ds, ridge: float, q) -> dict:
    """The consistent red<->blue relabelling of the test split's colour attribute
    (:func:`ecif.experiments.emi_study.relabelling_check`): a rule MI cannot see."""
    test = S.encode_set(emb, ds["test"])
    colors = ds.spec.values["color"]
    swap = {colors.index("red"): colors.index("blue"), colors.index("blue"): colors.index("red")}
    return S.relabelling_check(emb, test, "color", swap, ds.spec, {"ridge": ridge, "folds": 2}, q)


def seed_summary(table: pd.DataFrame, keys=("kind", "rate"), seed_column: str = "noise_seed") -> pd.DataFrame:
    """Per ``keys`` cell of a per-seed table: ``n_seeds`` and, for every other numeric column
    ``c``, ``c_mean``, ``c_std`` (sample std across seeds, ddof 1; 0 for a single seed),
    ``c_min`` and ``c_max``, over the seeds where ``c`` is defined (NaN where it never is, e.g.
    the detection columns of the clean fit). Rows in the table's order of first appearance."""
    if table.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds"])
    cols = [c for c in table.columns if c not in (*keys, seed_column) and pd.api.types.is_numeric_dtype(table[c])]
    g = table.groupby(list(keys), sort=False)
    out = pd.DataFrame({"n_seeds": g[seed_column].nunique() if seed_column in table else g.size()})
    for c in cols:
        count = g[c].count()
        std = g[c].std(ddof=1)
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_std"] = std.where(count > 1, 0.0).where(count > 0)
        out[f"{c}_min"] = g[c].min()
        out[f"{c}_max"] = g[c].max()
    return out.reset_index()


def metrics(grid: pd.DataFrame, corr: pd.DataFrame, summary: pd.DataFrame, marginals: pd.DataFrame,
            relabel: dict) -> dict:
    """The ``emi`` metrics (nested dicts, no dots inside keys): experiment A's correlations,
    experiment B's seed means and stds per (kind, rate) (``summary`` and ``marginals`` as
    :func:`seed_summary` gives them) and the relabelling check. Timings are not metrics of the
    experiment: the notebook writes them under the file's top-level ``time`` group."""
    out: dict = {"shift": {}, "misalignment": {}, "marginals": {}, "relabelling": {k: float(v) for k, v in relabel.items()}}
    for _, r in corr[corr["seed"] == "mean"].iterrows():
        out["shift"][f"corr_{r['x']}_{r['y']}"] = {k: float(r[k]) for k in
                                                   ("pearson", "pearson_lo", "pearson_hi", "spearman",
                                                    "spearman_lo", "spearman_hi")}
    out["shift"]["n_scenarios"] = int(grid["scenario"].nunique())
    out["shift"]["n_seeds"] = int(grid["seed"].nunique())
    for group, frame in (("misalignment", summary), ("marginals", marginals)):
        for _, r in frame.iterrows():
            cell = {k: float(v) for k, v in r.items()
                    if (k == "n_seeds" or k.endswith(("_mean", "_std"))) and pd.notna(v)}
            out[group][rate_key(r["kind"], r["rate"])] = cell
    return out


def _pm(summary_row, col: str, fmt: str = ".1f") -> str:
    return f"{summary_row[f'{col}_mean']:{fmt}} ± {summary_row[f'{col}_std']:{fmt}}"


def _interval(r) -> str:
    verdict = "interval above 0" if r["spearman_lo"] > 0 else (
        "interval below 0" if r["spearman_hi"] < 0 else "interval includes 0")
    return (f"Spearman {r['spearman']:.2f} [{r['spearman_lo']:.2f}, {r['spearman_hi']:.2f}], "
            f"Pearson {r['pearson']:.2f} [{r['pearson_lo']:.2f}, {r['pearson_hi']:.2f}] ({verdict})")


CORR_NAMES = {"emid": "EMID", "bound": "bound", "acc_drop": "accuracy drop"}


def findings(corr: pd.DataFrame, summary: pd.DataFrame, means: pd.DataFrame | None = None,
             marginals: pd.DataFrame | None = None, relabel: dict | None = None) -> list[str]:
    """The results of the stage as sentences, every number computed from the inputs.

    ``corr``: experiment A's correlation table (rows with ``seed == "mean"`` are used);
    ``summary``: :func:`seed_summary` of experiment B's models; optional ``means``
    (:func:`scenario_means` of the shift grid), ``marginals`` (:func:`seed_summary` of the
    marginal checks) and ``relabel`` (:func:`~ecif.experiments.emi_study.relabelling_check`).
    "Within one std" compares a difference of means with the root of the summed seed
    variances of the two cells."""
    out = []
    for _, r in corr[corr["seed"] == "mean"].iterrows():
        out.append(f"A. {CORR_NAMES.get(r['x'], r['x'])} vs {CORR_NAMES.get(r['y'], r['y'])} across scenarios: "
                   f"{_interval(r)}.")
    if means is not None and len(means):
        top = means.sort_values("emid", ascending=False).head(3)
        out.append("A. largest EMID: " + ", ".join(f"{r.scenario} {r.emid:.1f} (accuracy drop {r.acc_drop:.2f})"
                                                   for r in top.itertuples()) + ".")
        if "jsd_v" in means:
            vis = means[means["modality"] == "visual"]
            if len(vis):
                worst = vis.loc[vis["emid"].idxmax()]
                out.append(f"A. visual input term J_v at most {means['jsd_v'].max():.3g} across scenarios, while the "
                           f"worst visual shift ({worst['scenario']}) has EMID {worst['emid']:.1f} and accuracy drop "
                           f"{worst['acc_drop']:.2f}.")
        tmpl = means[means["scenario"].astype(str).str.startswith("retemplate")]
        if len(tmpl) and "jsd_t" in means:
            out.append(f"A. re-templating: J_t {tmpl['jsd_t'].min():.3f} to {tmpl['jsd_t'].max():.3f}, bound "
                       f"{tmpl['bound'].min():.2f} to {tmpl['bound'].max():.2f}, EMID {tmpl['emid'].min():.1f} to "
                       f"{tmpl['emid'].max():.1f}, accuracy drop {tmpl['acc_drop'].min():.2f} to "
                       f"{tmpl['acc_drop'].max():.2f}.")
    for kind, part in summary.groupby("kind", sort=False):
        part = part.sort_values("rate").set_index("rate")
        base_rate, top_rate = part.index.min(), part.index.max()
        base, top = part.loc[base_rate], part.loc[top_rate]
        n = int(part["n_seeds"].max())

        def within(a, b, col="emi"):
            return abs(a[f"{col}_mean"] - b[f"{col}_mean"]) <= np.hypot(a[f"{col}_std"], b[f"{col}_std"])

        same = [f"{100 * rt:.0f} %" for rt, r in part.iterrows() if rt != base_rate and within(r, base)]
        spread = (f"rates whose EMI is within one std of {100 * base_rate:.0f} %: {', '.join(same) if same else 'none'}"
                  if n > 1 else "one noise seed: no spread to compare the differences with")
        out.append(f"B. {kind}: EMI at {100 * top_rate:.0f} % is {_pm(top, 'emi')} vs {_pm(base, 'emi')} at "
                   f"{100 * base_rate:.0f} % (mean ± std over {n} noise seed{'s' if n != 1 else ''}); {spread}.")
        out.append(f"B. {kind}: accuracy {_pm(base, 'accuracy', '.3f')} at {100 * base_rate:.0f} % and "
                   f"{_pm(top, 'accuracy', '.3f')} at {100 * top_rate:.0f} %; discrete EMI {_pm(base, 'dmi_emi', '.3f')} "
                   f"and {_pm(top, 'dmi_emi', '.3f')}." if "dmi_emi_mean" in part else
                   f"B. {kind}: accuracy {_pm(base, 'accuracy', '.3f')} at {100 * base_rate:.0f} % and "
                   f"{_pm(top, 'accuracy', '.3f')} at {100 * top_rate:.0f} %.")
        bad = part[part.index > 0]
        if len(bad) and "precision_ecif_mean" in bad:
            out.append(f"B. {kind}: ECIF precision@k {bad['precision_ecif_mean'].min():.2f} to "
                       f"{bad['precision_ecif_mean'].max():.2f} across rates (seed means; random "
                       f"{bad['precision_random_mean'].min():.2f} to {bad['precision_random_mean'].max():.2f}).")
        sets = [s for s in ("ecif", "random", "oracle") if f"emi_after_{s}_mean" in bad]
        if len(bad) and sets:
            r = bad.loc[bad.index.max()]
            back = [s for s in sets if abs(r[f"emi_after_{s}_mean"] - base["emi_mean"])
                    <= np.hypot(r[f"emi_after_{s}_std"], base["emi_std"])]
            out.append(f"B. {kind} at {100 * bad.index.max():.0f} %: EMI {_pm(r, 'emi')} without removal; after "
                       "removing " + ", ".join(f"{s} {_pm(r, f'emi_after_{s}')}" for s in sets)
                       + f"; back within one std of the clean fit: {', '.join(back) if back else 'none'}.")
    if marginals is not None and len(marginals):
        for kind, part in marginals.groupby("kind", sort=False):
            top = part.loc[part["rate"].idxmax()]
            out.append(f"Limit 1, {kind}: caption JSD clean vs corrupted at most "
                       f"{part['jsd_captions_max'].max():.3g}, image JSD at most {part['jsd_images_max'].max():.3g} "
                       f"(all rates and seeds); pair-level discrete MI {top['dmi_clean_mean']:.2f} -> "
                       f"{top['dmi_corrupted_mean']:.2f}, CLUB refitted {top['mi_clean_mean']:.0f} -> "
                       f"{top['mi_corrupted_mean']:.0f} at {100 * top['rate']:.0f} %.")
    if relabel:
        share = relabel["emi_refit"] / relabel["mi_reference_refit"] if relabel.get("mi_reference_refit") else np.nan
        out.append(f"Limit 2, consistent relabelling: accuracy {relabel['accuracy']:.3f}, discrete EMI "
                   f"{relabel['dmi_emi']:.3f}, CLUB EMI with refitted terms {relabel['emi_refit']:+.1f} "
                   f"({100 * share:.1f} % of the reference MI {relabel['mi_reference_refit']:.0f}), with the shared "
                   f"estimator {relabel['emi_shared']:+.1f}.")
    return out


def scenario_means(grid: pd.DataFrame) -> pd.DataFrame:
    """Per-scenario mean over seeds of the grid's numeric columns (modality kept), for plots."""
    num = grid.drop(columns=["seed"]).groupby(["scenario", "modality"], sort=False).mean(numeric_only=True)
    return num.reset_index()


# ----------------------------------------------------------------------------------- figures

MODALITY_COLORS = {"visual": "tab:blue", "text": "tab:orange", "joint": "tab:purple"}
#: Removal sets in the colours of :data:`ecif.kit.plotting.METHOD_COLOURS`.
SET_COLORS = {s: METHOD_COLOURS[s] for s in ("none", "ecif", "random", "oracle")}
KIND_STYLES = {"shuffle": "-", "systematic_swap": "--"}


def plot_shifts(grid: pd.DataFrame, corr: pd.DataFrame):
    """Experiment A: EMID against its bound and against the accuracy drop, one point per
    scenario (mean over seeds, bars: std), coloured by the shifted modality."""
    import matplotlib.pyplot as plt

    mean = grid.groupby(["scenario", "modality"], sort=False).mean(numeric_only=True).reset_index()
    std = grid.groupby(["scenario", "modality"], sort=False).std(numeric_only=True).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    c = corr[corr["seed"] == "mean"].set_index(["x", "y"])
    for ax, col, label in ((axes[0], "bound", "EMID upper bound (scale-adjusted)"),
                           (axes[1], "acc_drop", "retrieval accuracy drop (P - Q)")):
        for mod, part in mean.groupby("modality"):
            s = std.loc[part.index]
            ax.errorbar(part[col], part["emid"], xerr=s[col].fillna(0), yerr=s["emid"].fillna(0), fmt="o",
                        color=MODALITY_COLORS.get(mod, "black"), label=f"{mod} shift", ms=5, alpha=0.85)
        r = c.loc[("emid", col)]
        ax.set_title(f"Spearman {r['spearman']:.2f} [{r['spearman_lo']:.2f}, {r['spearman_hi']:.2f}], "
                     f"Pearson {r['pearson']:.2f}", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel("EMID = EMI(P) - EMI(Q)  (nats, CLUB)")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=8)
    fig.suptitle("Experiment A: test-time shifts of the clean fine-tuned model (one point per scenario)")
    fig.tight_layout()
    return fig


def plot_misalignment(summary: pd.DataFrame):
    """Experiment B from :func:`seed_summary`: per kind, the test EMI against the misalignment
    rate without removal and after removing ECIF's top-k, a random k or the oracle set and
    refitting (colour = removal set), and ECIF's against random precision@k (line style = kind);
    points are seed means, bars the std across noise seeds."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(summary["kind"]))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 4.2), squeeze=False)
    axes = axes[0]
    for ax, kind in zip(axes, kinds):
        part = summary[summary["kind"] == kind].sort_values("rate")
        ax.errorbar(100 * part["rate"], part["emi_mean"], yerr=part["emi_std"], marker="o", capsize=3,
                    color=SET_COLORS["none"], label="no removal")
        bad = part[part["rate"] > 0]
        for j, name in enumerate(("ecif", "random", "oracle")):
            col = f"emi_after_{name}"
            if f"{col}_mean" in bad:
                ax.errorbar(100 * bad["rate"] + 0.4 * (j + 1), bad[f"{col}_mean"], yerr=bad[f"{col}_std"],
                            marker=".", capsize=3, color=SET_COLORS[name], label=f"after removing {name} k, refit")
        ax.set_xlabel("misaligned train pairs (%)")
        ax.set_ylabel("CLUB EMI on the clean test split (nats)")
        ax.set_title(f"{kind}: EMI (mean ± std over noise seeds)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    for kind in kinds:
        bad = summary[(summary["kind"] == kind) & (summary["rate"] > 0)].sort_values("rate")
        ls = KIND_STYLES.get(kind, ":")
        for name, marker in (("ecif", "o"), ("random", "x")):
            col = f"precision_{name}"
            if f"{col}_mean" in bad:
                ax.errorbar(100 * bad["rate"], bad[f"{col}_mean"], yerr=bad[f"{col}_std"], fmt=ls, marker=marker,
                            capsize=3, color=SET_COLORS[name], label=f"{name}, {kind}")
    ax.set_xlabel("misaligned train pairs (%)")
    ax.set_ylabel("precision@k (k = number injected)")
    ax.set_ylim(0, 1.05)
    ax.set_title("detection (solid: shuffle, dashed: systematic swap)", fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    fig.suptitle("Experiment B: misalignment in the fine-tuning pairs")
    fig.tight_layout()
    return fig
