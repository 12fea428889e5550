"""Glue of the hard-negative batching study (notebook ``14_hard_negatives``): one call, tables out.

:func:`hard_negative_run` corrupts the train split, encodes every split with the saved frozen
encoder, builds the fine-tuning problem (:func:`ecif.kit.problem.build_problem`, head mode),
degrades the train images, mines each pair's hard negatives with the model before fine-tuning
(:func:`ecif.experiments.hard_negatives.mine_hard_negatives` at ``theta0``), grows the
hard-negative batching from them and runs
:func:`ecif.experiments.hard_negatives.hard_negative_study` against the problem's own random
batching (same pairs, batch size and ``lam``). :func:`metrics` shapes the summary into the
``hard_negatives`` metrics, :func:`findings` states the result in sentences computed from the
numbers, :func:`study_figure` draws it (one colour per batching).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd

from ecif.kit.problem import FitSettings

__all__ = ["BATCHING_COLOURS", "hard_negative_run", "metrics", "findings", "study_figure"]

#: One colour per batching in the study's figures.
BATCHING_COLOURS = {"random": "#7f7f7f", "hard_negative": "#9467bd"}


def hard_negative_run(dataset: str, data_root, encoder_dir, *, kind: str = "attribute_swap", rate: float = 0.2,
                      noise_seed: int = 0, systematic: bool = False, attribute: str | None = None,
                      settings: FitSettings = FitSettings(), degrade: str = "blur", strength: float = 2.0,
                      patch: int = 4, n_hard: int = 8, n_pairs: int = 40, n_misaligned: int = 10, seed: int = 0,
                      encoder: str = "embedded", device: str = "cpu", progress: bool = False) -> dict:
    """The study on one corrupted data set; returns ``{"summary", "loo", "mined", "seconds"}``.

    ``kind``, ``rate``, ``noise_seed``, ``systematic``, ``attribute``: the corruption of the train
    split (:func:`ecif.data.noise.inject`); ``settings``: the fit (``finetune`` group; head mode
    only, the degraded images are encoded to pooled features); ``degrade``, ``strength``,
    ``patch``: :func:`ecif.experiments.hard_negatives.degrade_images`; ``n_hard``: hard negatives
    per pair; ``n_pairs``, ``n_misaligned``: the leave-one-out sample
    (:func:`ecif.experiments.retraining.sample_loo_pairs`, seed ``seed``); ``seed`` also draws the
    visiting order of the hard-negative batching and the tie order of the mining.

    ``summary`` and ``loo``: the tables of :func:`hard_negative_study` (batchings ``random`` and
    ``hard_negative``); ``mined``: a one-row DataFrame describing the graph (``n_train``,
    ``n_hard``, ``misaligned_share`` = share of hard negatives that are misaligned pairs,
    ``met_random`` / ``met_hard_negative`` = share of each pair's hard negatives in its own batch);
    ``seconds``: ``features_s``, ``mining_s``, ``study_s``.
    """
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder
    from ecif.data.features import image_features
    from ecif.data.noise import inject
    from ecif.experiments.hard_negatives import degrade_images, hard_negative_study, mine_hard_negatives
    from ecif.experiments.retraining import sample_loo_pairs
    from ecif.kit.problem import build_problem, extract_and_save

    if settings.mode != "head":
        raise ValueError(f"the hard-negative study runs in head mode (pooled features of the degraded images); got "
                         f"finetune.mode: {settings.mode}. Fix: finetune.mode: head for this stage.")
    t0 = time.perf_counter()
    ds = load_dataset(dataset, root=data_root)
    corruption = inject(ds["train"], kind, rate, noise_seed, systematic=systematic, attribute=attribute)
    model, tokenizer, _ = load_encoder(encoder, encoder_dir, device=device)
    with tempfile.TemporaryDirectory() as features_dir:
        extract_and_save(features_dir, model, tokenizer, ds, corruption, mode="head")
        problem = build_problem(features_dir, **settings.problem_kwargs(), device=device)
    features_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    images = ds["train"].images[: problem.n]
    x_deg = image_features(model, degrade_images(images, degrade, strength, patch=patch, seed=seed), progress=False)
    x_deg, _ = problem.centre_features(x_deg)
    x, y = problem.train_features
    hn = mine_hard_negatives(problem.param, problem.param.theta0, x_deg, y.cpu().numpy(), n_hard, seed=seed)
    batchings = {"random": problem.batching, "hard_negative": hn.batching(settings.batch_size, seed)}
    mining_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = sample_loo_pairs(problem.mask, n_pairs, n_misaligned, seed)
    summary, loo = hard_negative_study(problem.param, x, y, problem.val, batchings, lam=settings.lam, loo_pairs=pairs,
                                       mask=problem.mask, similarity=hn.similarity, gtol=settings.gtol,
                                       max_iter=settings.max_iter, method=settings.method, progress=progress)
    study_s = time.perf_counter() - t0
    mined = {"n_train": problem.n, "n_hard": n_hard, "misaligned_share": float(problem.mask[hn.neighbours].mean())}
    for name, bp in batchings.items():
        mined[f"met_{name}"] = float((bp.batch_ids[hn.neighbours] == bp.batch_ids[:, None]).mean())
    return {"summary": summary, "loo": loo, "mined": pd.DataFrame([mined]),
            "seconds": {"features_s": features_s, "mining_s": mining_s, "study_s": study_s}}


def metrics(summary: pd.DataFrame) -> dict:
    """``{"hard_negatives": {batching: {neg_to_pos, pearson_positive, spearman_positive,
    pearson_ecif, spearman_ecif, pearson_newton, spearman_newton, within_batch_similarity}}}`` of
    a study summary."""
    keys = ("neg_to_pos", "pearson_positive", "spearman_positive", "pearson_ecif", "spearman_ecif", "pearson_newton",
            "spearman_newton", "within_batch_similarity")
    return {"hard_negatives": {row["batching"]: {k: float(row[k]) for k in keys}
                               for _, row in summary.iterrows()}}


def findings(summary: pd.DataFrame, mined: pd.DataFrame | None = None) -> list[str]:
    """What the study found, as sentences computed from ``summary`` (and ``mined``)."""
    s = summary.set_index("batching")
    r, h = s.loc["random"], s.loc["hard_negative"]
    out = []
    if mined is not None:
        m = mined.iloc[0]
        out.append(f"Each pair shares its batch with {m['met_hard_negative']:.0%} of its {int(m['n_hard'])} mined hard "
                   f"negatives under hard-negative batching, {m['met_random']:.0%} under random batching; "
                   f"{m['misaligned_share']:.0%} of the mined hard negatives are misaligned pairs.")
    out.append(f"Mean similarity of batch mates (degraded image against caption, model before fine-tuning): "
               f"{h['within_batch_similarity']:.3f} with hard negatives, {r['within_batch_similarity']:.3f} at random.")
    change = "grows" if h["neg_to_pos"] > r["neg_to_pos"] else "shrinks"
    out.append(f"The negative term's share ||IS_neg|| / ||IS_pos|| {change} from {r['neg_to_pos']:.3f} (random) to "
               f"{h['neg_to_pos']:.3f} (hard negatives), a factor {h['neg_to_pos'] / r['neg_to_pos']:.2f}.")
    for v in ("positive", "ecif", "newton"):
        out.append(f"`{v}` against leave-one-out retraining ({int(h['n_loo'])} pairs): Pearson "
                   f"{r[f'pearson_{v}']:.3f} -> {h[f'pearson_{v}']:.3f}, Spearman {r[f'spearman_{v}']:.3f} -> "
                   f"{h[f'spearman_{v}']:.3f} (random -> hard negatives).")
    out.append(f"Smallest Hessian eigenvalue at the fit: {r['min_eigenvalue']:.4f} (random), {h['min_eigenvalue']:.4f} "
               f"(hard negatives); median Newton steps of a refit: {r['refit_iterations']:.1f} and "
               f"{h['refit_iterations']:.1f}."
               + (" The hard-negative fit is flatter and even `newton` (exact removal gradient) agrees less: one "
                  "removal moves the fit further than the single step of influence predicts."
                  if h["min_eigenvalue"] < r["min_eigenvalue"] and h["pearson_newton"] < r["pearson_newton"] else ""))
    gap_r = r["pearson_ecif"] - r["pearson_positive"]
    gap_h = h["pearson_ecif"] - h["pearson_positive"]
    out.append(f"ECIF's Pearson advantage over the classical (positive-only) influence: {gap_r:+.3f} under random "
               f"batching, {gap_h:+.3f} under hard-negative batching.")
    return out


def study_figure(summary: pd.DataFrame, loo: pd.DataFrame):
    """Left: ``||IS_neg|| / ||IS_pos||`` per batching. Middle: Pearson of ``positive``,
    ``ecif`` and ``newton`` with retraining per batching. Right: predicted ``ecif`` against the actual
    leave-one-out change, one colour per batching (crosses: misaligned pairs)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    names = summary["batching"].tolist()
    colours = [BATCHING_COLOURS.get(b, "#333333") for b in names]
    ax[0].bar(names, summary["neg_to_pos"], color=colours)
    ax[0].set_xlabel("batching")
    ax[0].set_ylabel("||IS_neg|| / ||IS_pos||")
    ax[0].set_title("share of the negative term")
    width, variants = 0.38, ("positive", "ecif", "newton")
    for i, (name, colour) in enumerate(zip(names, colours)):
        row = summary.iloc[i]
        ax[1].bar(np.arange(len(variants)) + (i - 0.5) * width, [row[f"pearson_{v}"] for v in variants], width,
                  color=colour, label=name)
    ax[1].set_xticks(np.arange(len(variants)), list(variants))
    ax[1].set_xlabel("influence variant")
    ax[1].set_ylabel("Pearson with leave-one-out")
    ax[1].set_ylim(min(0.0, float(summary[[f"pearson_{v}" for v in variants]].min().min())), 1.0)
    ax[1].legend(title="batching", fontsize=8, loc="lower left")
    for name, colour in zip(names, colours):
        part = loo[loo["batching"] == name]
        bad = part["misaligned"].to_numpy(bool)
        ax[2].scatter(part["actual"][~bad], part["ecif"][~bad], s=18, color=colour, label=f"{name}")
        ax[2].scatter(part["actual"][bad], part["ecif"][bad], s=30, marker="x", color=colour)
    lim = float(np.abs(loo[["actual", "ecif"]].to_numpy()).max()) * 1.05
    ax[2].plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax[2].set_xlabel("actual L_val change (retraining)")
    ax[2].set_ylabel("predicted IS (ecif)")
    ax[2].legend(title="batching (x: misaligned)", fontsize=8)
    fig.tight_layout()
    return fig
