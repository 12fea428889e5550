"""Glue of the ``emi`` stage (notebook ``11_emi``): the two experiments as calls, tables out.

* :func:`shift_experiment` (experiment A): the model fine-tuned on clean pairs, the clean test
  split as P, every shift scenario as Q, for several shift seeds; EMID, its bound and the
  correlations across scenarios.
* :func:`misalignment_experiment` (experiment B): one fit per (misalignment kind, rate) through
  :func:`ecif.kit.problem.fit_corrupted`; the model's EMI on the clean test split, ECIF's
  detection precision@k (k = number injected) on its train split, and the EMI after refitting
  without ECIF's top-k, a random k and the oracle set (the misaligned pairs); plus what the
  bound's input terms and the pair-level MI see of the corrupted *training* pairs.
* :func:`metrics` shapes both into the ``emi`` metrics (keys without dots).

The estimators and the dual-encoder mapping are in :mod:`ecif.experiments.emi` and
:mod:`ecif.experiments.emi_study`.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd

from ecif.experiments import emi_study as S


def _kind(kind: str) -> tuple[str, bool]:
    return ("attribute_swap", True) if kind == "systematic_swap" else (kind, False)


def rate_key(kind: str, rate: float) -> str:
    """Metric-key name of a cell, without dots: ``shuffle_r05`` for 5 %."""
    return f"{kind}_r{int(round(rate * 100)):02d}"


def setup(dataset: str, data_root: str, encoder_dir: str, embedder: str = "fixed", pool: int = 4,
          ridge: float = 1e-2):
    """Data set, embedder and the shared CLUB estimator (fitted on the clean pretrain split)."""
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_default

    ds = load_dataset(dataset, root=data_root)
    model, tokenizer, _ = load_default(encoder_dir)
    emb = S.Embedder(model, tokenizer, mode=embedder, pool=pool)
    q = S.fit_reference_estimator(emb, ds["pretrain"], ridge=ridge)
    return ds, emb, q


def fit_model(dataset, data_root, encoder_dir, kind: str, rate: float, noise_seed: int, fit_kw: dict):
    """``(fitted, info)`` of one (kind, rate) cell (features in a temporary folder); ``fit_kw``
    are the fields of :class:`~ecif.kit.problem.FitSettings` (the ``finetune`` group)."""
    from ecif.kit.problem import FitSettings, fit_corrupted

    noise_kind, systematic = _kind(kind)
    with tempfile.TemporaryDirectory() as fd:
        fitted, info = fit_corrupted(dataset, data_root, encoder_dir, fd, kind=noise_kind, rate=rate,
                                     noise_seed=noise_seed, systematic=systematic, settings=FitSettings(**fit_kw))
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


def misalignment_experiment(ds, emb, q, data_root: str, encoder_dir: str, kinds, rates, noise_seed: int,
                            fit_kw: dict, seed: int = 0, ridge: float = 1e-2, clean_fit=None
                            ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Experiment B. Returns ``(models, marginals, fits)``: one row per (kind, rate) with the
    model's test ``emi``, ``accuracy``, ``dmi_emi``, ``precision_<m>`` / ``auroc_<m>`` (k = number
    injected) for ``m`` in ecif and random, and ``emi_after_<set>`` / ``accuracy_after_<set>`` /
    ``misaligned_removed_<set>`` for the removal sets ecif, random, oracle; one row per
    (kind, rate > 0) of :func:`~ecif.experiments.emi_study.marginal_check` on the train split;
    ``fits``: (kind, rate) -> the fit (the clean fit, rate 0, is shared by every kind)."""
    from ecif.core.evaluate import validation_gradient
    from ecif.data.noise import inject
    from ecif.experiments import detection

    test = S.encode_set(emb, ds["test"])
    rows, marg, fits = [], [], {}
    for kind in kinds:
        for rate in rates:
            t0 = time.perf_counter()
            if rate == 0 and clean_fit is not None:
                fitted = clean_fit
            else:
                fitted, _ = fit_model(ds.name, data_root, encoder_dir, kind, rate, noise_seed, fit_kw)
            fits[(kind, rate)] = fitted
            prob, theta = fitted.problem, fitted.theta_hat
            ev = S.evaluate(test, S.respond(prob.param, theta, test, prob.centring), q=q)
            row = {"kind": kind, "rate": rate, "n_misaligned": int(prob.mask.sum()), "emi": ev["emi"],
                   "accuracy": ev["accuracy"], "dmi_emi": ev["dmi_model"] - ev["dmi_reference"]}
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
                    e2 = S.evaluate(test, S.respond(prob.param, th, test, prob.centring), q=q)
                    row[f"emi_after_{name}"] = e2["emi"]
                    row[f"accuracy_after_{name}"] = e2["accuracy"]
                    row[f"misaligned_removed_{name}"] = int(prob.mask[idx].sum())
                noise_kind, systematic = _kind(kind)
                corr = inject(ds["train"], noise_kind, rate, noise_seed, systematic=systematic)
                n = len(prob.mask)
                train = ds["train"].subset(np.arange(n))
                marg.append({"kind": kind, "rate": rate,
                             **S.marginal_check(emb, train, corr.captions[:n], {"ridge": ridge, "folds": 2}, q)})
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(marg), fits


def metrics(grid: pd.DataFrame, corr: pd.DataFrame, models: pd.DataFrame, marginals: pd.DataFrame,
            relabel: dict, timings: dict) -> dict:
    """The ``emi`` metrics (nested dicts, no dots inside keys)."""
    out: dict = {"shift": {}, "misalignment": {}, "marginals": {}, "relabelling": dict(relabel),
                 "time": dict(timings)}
    for _, r in corr[corr["seed"] == "mean"].iterrows():
        out["shift"][f"corr_{r['x']}_{r['y']}"] = {k: float(r[k]) for k in
                                                   ("pearson", "pearson_lo", "pearson_hi", "spearman",
                                                    "spearman_lo", "spearman_hi")}
    out["shift"]["n_scenarios"] = int(grid["scenario"].nunique())
    out["shift"]["n_seeds"] = int(grid["seed"].nunique())
    for _, r in models.iterrows():
        cell = {k: float(v) for k, v in r.items() if k not in ("kind", "rate", "seconds") and pd.notna(v)}
        out["misalignment"][rate_key(r["kind"], r["rate"])] = cell
    for _, r in marginals.iterrows():
        out["marginals"][rate_key(r["kind"], r["rate"])] = {k: float(v) for k, v in r.items()
                                                             if k not in ("kind", "rate")}
    return out


def scenario_means(grid: pd.DataFrame) -> pd.DataFrame:
    """Per-scenario mean over seeds of the grid's numeric columns (modality kept), for plots."""
    num = grid.drop(columns=["seed"]).groupby(["scenario", "modality"], sort=False).mean(numeric_only=True)
    return num.reset_index()


# ----------------------------------------------------------------------------------- figures

MODALITY_COLORS = {"visual": "tab:blue", "text": "tab:orange", "joint": "tab:purple"}
SET_COLORS = {"none": "black", "ecif": "tab:blue", "random": "tab:gray", "oracle": "tab:green"}
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


def plot_misalignment(models: pd.DataFrame):
    """Experiment B: test EMI and ECIF precision@k against the misalignment rate (line style =
    kind), and the EMI after removing ECIF's top-k, a random k or the oracle set (colour = set)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    twin = axes[0].twinx()
    for kind, part in models.groupby("kind", sort=False):
        part = part.sort_values("rate")
        ls = KIND_STYLES.get(kind, ":")
        axes[0].plot(100 * part["rate"], part["emi"], ls, marker="o", color="black", label=f"CLUB EMI, {kind}")
        twin.plot(100 * part["rate"], part["dmi_emi"], ls, marker="s", color="tab:red",
                  label=f"discrete EMI, {kind}")
        bad = part[part["rate"] > 0]
        axes[1].plot(100 * bad["rate"], bad["precision_ecif"], ls, marker="o", color=SET_COLORS["ecif"],
                     label=f"ecif, {kind}")
        axes[1].plot(100 * bad["rate"], bad["precision_random"], ls, marker="x", color=SET_COLORS["random"],
                     label=f"random, {kind}")
        axes[2].plot(100 * part["rate"], part["emi"], ls, marker="o", color=SET_COLORS["none"],
                     label=f"no removal, {kind}")
        for name in ("ecif", "random", "oracle"):
            col = f"emi_after_{name}"
            if col in bad:
                axes[2].plot(100 * bad["rate"], bad[col], ls, marker=".", color=SET_COLORS[name],
                             label=f"after removing {name}-k, {kind}")
    axes[0].set_ylabel("CLUB EMI on the clean test split (nats)")
    twin.set_ylabel("discrete EMI (attribute tuple vs caption, nats)", color="tab:red")
    twin.legend(fontsize=7, loc="lower right")
    axes[0].set_title("EMI of the fine-tuned model (black: CLUB, shared q; red: discrete)", fontsize=9)
    axes[1].set_ylabel("precision@k (k = number injected)")
    axes[1].set_title("detection of the misaligned train pairs", fontsize=9)
    axes[2].set_ylabel("EMI on the clean test split (nats)")
    axes[2].set_title("does EMI recover after removal and refit?", fontsize=9)
    for ax, loc in zip(axes, ("lower left", "center right", "lower left")):
        ax.set_xlabel("misaligned train pairs (%)")
        ax.legend(fontsize=7, loc=loc)
    fig.suptitle("Experiment B: misalignment in the fine-tuning pairs (solid: shuffle, dashed: systematic swap)")
    fig.tight_layout()
    return fig
