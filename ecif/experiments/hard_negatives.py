"""Hard negatives bootstrapped from the model's own language prior, and the batches built on them.

The idea (docs/math.md §16): show the model a training image with its
content destroyed (blurred, or with a fraction of its patches blanked) and ask which captions it
still prefers. What it picks then comes from what it has learnt about captions in general, not
from the image: those captions are the ones it confuses most easily with the true caption, its
*hard negatives*. In a contrastive loss a pair only meets the negatives of its own batch, so
the fixed batching protocol decides whether a pair ever meets its hard negatives; grouping each
pair with its hard negatives changes exactly the negative role of every pair (the ``Neg_k``
terms of the influence engine, :mod:`ecif.core.influence`).

One job per function:

- :func:`degrade_images` blurs or patch-masks uint8 images (seeded);
- :func:`hard_negatives` turns embeddings of degraded images and of the train captions into the
  similarity matrix and each pair's top-``m`` other captions (vectorised);
- :func:`mine_hard_negatives` does the same from frozen features through a parametrization at
  given parameters (the model before fine-tuning, ``theta0``, since the batches are fixed
  before training);
- :func:`hard_negative_study` fits the same problem under several batchings and measures the
  share of the negative term in the influence scores and the agreement of ``positive`` and
  ``ecif`` with leave-one-out retraining.

The batching constructor itself is pure index math and lives in the core:
:meth:`ecif.core.batching.BatchingProtocol.from_hard_negatives`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ecif.core.batching import BatchingProtocol, within_batch_mean
from ecif.core.fit import fit
from ecif.core.objective import ContrastiveObjective
from ecif.core.terms import DTYPE
from ecif.data.shifts import gaussian_blur
from ecif.experiments.retraining import loo_experiment, loo_metrics

__all__ = ["DEGRADATIONS", "HardNegatives", "STUDY_COLUMNS", "degrade_images", "hard_negatives",
           "mine_hard_negatives", "hard_negative_study"]

#: How an image is degraded before mining: Gaussian blur (``strength`` = sigma in pixels) or
#: blanking a fraction of its square patches (``strength`` = that fraction).
DEGRADATIONS = ("blur", "mask")

#: Columns of the summary table of :func:`hard_negative_study` (one row per batching).
STUDY_COLUMNS = ("batching", "batch_size", "n_batches", "within_batch_similarity", "neg_to_pos", "pearson_positive",
                 "spearman_positive", "pearson_ecif", "spearman_ecif", "pearson_newton", "spearman_newton", "val_loss",
                 "fit_grad_norm", "min_eigenvalue", "refit_iterations", "refits_converged", "n_loo")


def degrade_images(images: np.ndarray, kind: str, strength: float, *, patch: int = 4, seed: int = 0) -> np.ndarray:
    """Images with their content destroyed, same shape and dtype (uint8 ``(n, H, W[, C])``).

    ``kind="blur"``: Gaussian blur of standard deviation ``strength`` pixels
    (:func:`ecif.data.shifts.gaussian_blur`). ``kind="mask"``: the image is cut into square
    patches of ``patch`` pixels (edge patches may be smaller) and each patch, independently with
    probability ``strength``, is set to 0 in every channel (``numpy.random.default_rng(seed)``);
    ``strength=1`` blanks the whole image.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, H, W) or (n, H, W, C), got {images.dtype} {images.shape}.")
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {DEGRADATIONS}.")
    if kind == "blur":
        if not strength > 0:
            raise ValueError(f"blur strength is sigma in pixels and must be > 0, got {strength}.")
        return gaussian_blur(images, float(strength))
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"mask strength is the fraction of patches blanked and must lie in [0, 1], got {strength}.")
    if patch < 1:
        raise ValueError(f"patch must be >= 1 pixel, got {patch}.")
    n, h, w = images.shape[:3]
    gh, gw = -(-h // patch), -(-w // patch)
    blank = np.random.default_rng(seed).random((n, gh, gw)) < strength
    blank = np.repeat(np.repeat(blank, patch, axis=1), patch, axis=2)[:, :h, :w]
    if images.ndim == 4:
        blank = blank[..., None]
    return np.where(blank, 0, images).astype(np.uint8)


@dataclass(frozen=True)
class HardNegatives:
    """The mined hard-negative graph.

    ``similarity`` ``(n, n)`` float64: cosine similarity of degraded image ``k`` (row) with
    train caption ``j`` (column). ``neighbours`` ``(n, m)`` int64: row ``k`` holds the ``m``
    captions ``j`` with the largest ``similarity[k, j]``, largest first, over the candidates
    ``j != k`` (and, with ``exclude_same_caption``, captions different from ``k``'s own).
    """

    similarity: np.ndarray
    neighbours: np.ndarray

    def batching(self, batch_size: int | None, seed: int) -> BatchingProtocol:
        """:meth:`BatchingProtocol.from_hard_negatives` of :attr:`neighbours`."""
        return BatchingProtocol.from_hard_negatives(self.neighbours, batch_size, seed)


def hard_negatives(image_emb, text_emb, m: int, *, exclude_same_caption: bool = True, seed: int = 0,
                   tol: float = 1e-9) -> HardNegatives:
    """Each pair's ``m`` hardest other captions under the model that produced the embeddings.

    ``image_emb`` ``(n, e)``: embeddings of the *degraded* train images; ``text_emb`` ``(n, e)``:
    embeddings of the train captions (row ``k`` of both is pair ``k``); any scale, both are
    normalised here. The similarity is ``S[k, j] = <u_k, v_j> / (|u_k| |v_j|)``, the diagonal
    (the pair's own caption) is never a candidate, and with ``exclude_same_caption`` neither is a
    caption whose embedding coincides with ``k``'s own (text cosine above ``1 - tol``: the same
    text, which would be a false negative, not a hard one). Ties (identical captions of
    different pairs) are broken by a random order of the columns drawn from ``seed``, so that
    no pair is everyone's hard negative by index alone. Raises ``ValueError`` when a pair has
    fewer than ``m`` candidates.
    """
    u = torch.as_tensor(image_emb, dtype=DTYPE, device="cpu")
    v = torch.as_tensor(text_emb, dtype=DTYPE, device="cpu")
    if u.ndim != 2 or v.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"image_emb and text_emb must both be (n, e) with the same shape, got {tuple(u.shape)} and "
                         f"{tuple(v.shape)}.")
    n = u.shape[0]
    if not 1 <= m < n:
        raise ValueError(f"m (hard negatives per pair) must be in 1..{n - 1} for {n} pairs, got {m}.")
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-300)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sim = u @ v.T
    excluded = torch.eye(n, dtype=torch.bool, device="cpu")
    if exclude_same_caption:
        excluded |= (v @ v.T) > 1 - tol
    short = (n - excluded.sum(dim=1)) < m
    if short.any():
        k = int(torch.nonzero(short)[0])
        raise ValueError(f"pair {k} has only {n - int(excluded[k].sum())} candidate captions, fewer than m={m} "
                         f"({int(short.sum())} pairs are short); lower m, or pass exclude_same_caption=False.")
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(n), device="cpu")
    scored = sim.masked_fill(excluded, -np.inf)[:, perm]
    order = torch.sort(scored, dim=1, descending=True, stable=True).indices[:, :m]
    return HardNegatives(sim.numpy(), perm[order].numpy().astype(np.int64))


def mine_hard_negatives(param, theta: torch.Tensor, x_degraded, y, m: int, *, exclude_same_caption: bool = True,
                        seed: int = 0) -> HardNegatives:
    """:func:`hard_negatives` of the embeddings ``param`` gives at ``theta``.

    ``x_degraded`` ``(n, d_img)``: frozen features of the degraded train images (as the
    problem's features: centred where the problem is); ``y`` ``(n, d_txt)``: the train
    captions' features. Embeddings are ``param.encode_images(theta, x)`` and
    ``param.encode_texts(theta, y)`` (projection heads: ``x W_img(theta)^T``). Pass
    ``theta = param.theta0`` for the model before fine-tuning.
    """
    dev = param.device
    x = torch.as_tensor(np.asarray(x_degraded), dtype=DTYPE, device=dev)
    yy = torch.as_tensor(np.asarray(y), dtype=DTYPE, device=dev)
    if x.shape[0] != yy.shape[0]:
        raise ValueError(f"x_degraded and y must hold the same pairs, got {x.shape[0]} and {yy.shape[0]} rows.")
    with torch.no_grad():
        theta = param.check_theta(theta)
        u, v = param.encode_images(theta, x), param.encode_texts(theta, yy)
    return hard_negatives(u.cpu(), v.cpu(), m, exclude_same_caption=exclude_same_caption, seed=seed)


def hard_negative_study(param, x, y, val_objective: ContrastiveObjective, batchings: dict, *, lam: float,
                        loo_pairs, mask=None, similarity=None, gtol: float = 1e-9, max_iter: int = 100,
                        method: str = "newton-cg", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same pairs fitted under each batching, and what that does to influence.

    For each ``name -> BatchingProtocol`` of ``batchings`` (same ``param``, features ``x``
    ``(n, d_img)``, ``y`` ``(n, d_txt)`` and ``lam``): fit ``L`` (:func:`ecif.core.fit.fit`,
    ``gtol``, ``max_iter``, ``method``), score every pair with the influence engine on
    ``grad L_val`` (variants ``positive``, ``negative``, ``ecif``, ``newton``; undamped dense solve) and
    retrain without each pair of ``loo_pairs`` (:func:`ecif.experiments.retraining.loo_experiment`,
    warm start). Measured per batching:

    - ``neg_to_pos = ||IS_negative|| / ||IS_positive||``, Euclidean norms over all ``n`` pairs:
      how much of the influence comes from the pairs' role as negatives;
    - Pearson and Spearman of ``positive``, ``ecif`` and ``newton`` (the exact removal gradient,
      which tells a first-order negative term from the Hessian's part) against the leave-one-out
      changes;
    - ``within_batch_similarity``: :func:`ecif.core.batching.within_batch_mean` of
      ``similarity`` (e.g. :attr:`HardNegatives.similarity`; ``nan`` without one);
    - ``min_eigenvalue``: the smallest eigenvalue of the Hessian of ``L`` at the fit (``lam``
      included), ``refit_iterations``: the median Newton steps of the refits (how far the
      leave-one-out optima lie from ``theta_hat`` in the fit's own terms).

    Returns ``(summary, loo)``: ``summary`` has one row per batching and the columns
    :data:`STUDY_COLUMNS`; ``loo`` is the long leave-one-out table (``batching`` plus the
    columns of :func:`loo_experiment`). Raises ``RuntimeError`` when a fit misses ``gtol``.
    """
    if not batchings:
        raise ValueError("batchings is empty: pass e.g. {'random': BatchingProtocol.from_seed(n, 64, 0), "
                         "'hard_negative': HardNegatives.batching(64, 0)}.")
    n = len(x)
    for name, bp in batchings.items():
        if not isinstance(bp, BatchingProtocol) or bp.n != n:
            raise ValueError(f"batching {name!r} must be a BatchingProtocol over the {n} pairs, got "
                             f"{getattr(bp, 'n', type(bp).__name__)}.")
    pairs = np.asarray(loo_pairs, dtype=np.int64).reshape(-1)
    if pairs.size < 3 or pairs.min() < 0 or pairs.max() >= n:
        raise ValueError(f"loo_pairs must hold at least 3 pair indices in 0..{n - 1} (correlations need 3), got "
                         f"{pairs.size} values.")
    if similarity is not None and np.shape(similarity) != (n, n):
        raise ValueError(f"similarity must be ({n}, {n}), got {np.shape(similarity)}.")
    rows, tables = [], []
    for name, bp in batchings.items():
        objective = ContrastiveObjective(param, x, y, bp, lam=lam)
        res = fit(objective, gtol=gtol, max_iter=max_iter, method=method, warn=False)
        if not res.converged:
            raise RuntimeError(f"the fit under batching {name!r} did not reach gtol={gtol}: {res.summary()}; raise "
                               "max_iter or lam.")
        table, info = loo_experiment(objective, val_objective, res.theta, pairs, mask=mask, gtol=gtol,
                                     variants=("positive", "negative", "ecif", "newton"), progress=progress)
        agree = loo_metrics(table, ("positive", "ecif", "newton"))
        s = info["scores"]
        rows.append({
            "batching": name,
            "batch_size": int(bp.batch_sizes.max()),
            "n_batches": bp.n_batches,
            "within_batch_similarity": float("nan") if similarity is None else within_batch_mean(similarity, bp),
            "neg_to_pos": float(np.linalg.norm(s["negative"]) / np.linalg.norm(s["positive"])),
            "pearson_positive": agree["positive"]["pearson"],
            "spearman_positive": agree["positive"]["spearman"],
            "pearson_ecif": agree["ecif"]["pearson"],
            "spearman_ecif": agree["ecif"]["spearman"],
            "pearson_newton": agree["newton"]["pearson"],
            "spearman_newton": agree["newton"]["spearman"],
            "val_loss": info["val_loss"],
            "fit_grad_norm": res.grad_norm,
            "min_eigenvalue": float(info["solver"].get("min_eigenvalue", float("nan"))),
            "refit_iterations": float(table["iterations"].median()),
            "refits_converged": bool(table["converged"].all()),
            "n_loo": int(pairs.size),
        })
        tables.append(table.assign(batching=name))
    loo = pd.concat(tables, ignore_index=True)
    return pd.DataFrame(rows, columns=list(STUDY_COLUMNS)), loo[["batching", *[c for c in loo if c != "batching"]]]
