"""Misprediction trace-back: which training pairs pushed the model into a test error?

For a test item ``z`` with zero-shot loss ``l_z`` and each training pair ``k``:

* ``IS_z(k) = grad l_z^T Delta theta(k)`` (one solve, all pairs at once),
* ``RIS(k, z) = IS_z(k) / ||Delta theta(k)||`` (docs/math.md §9, relative influence).

The norms ``||Delta theta(k)||`` (one solve per pair, or the factorised Hessian) and the pair
gradients do not depend on the test item: a :class:`CulpritScorer` computes them once, on first
use, and then costs one solve and one all-pairs forward-mode pass per item. Pass one scorer to
:func:`counterfactual_traceback` and :func:`trace_gallery` so a stage pays for the per-pair part once
(in block mode, CG, it is n solves; before, every item and every call paid it again).

Negative values mean removing ``k`` lowers ``l_z``: ``k`` is a culprit. The functions here
return **culprit scores** ``-IS_z`` and ``-RIS`` (higher = more responsible), like every
detection score in the kit. The counterfactual check removes the top-``k`` culprits, retrains
(warm-started, :mod:`ecif.experiments.retraining`) and looks at the item's margin.

Which mispredicted items to check (:func:`select_items`) decides whether the check can show
anything: the most confidently wrong items sit far behind the decision boundary (margins of
-10 and below on the kit's fits), so removing 5 or 10 pairs improves their margin but never
fixes them; the least confidently wrong ones (margins just below 0) can be fixed, and the
random-removal control says how often that happens by chance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ecif.core.terms import VARIANT_TERMS
from ecif.experiments.retraining import retrain

__all__ = ["ORDERS", "CulpritScorer", "counterfactual_traceback", "culprit_scores", "select_items", "trace_gallery"]

#: How :func:`select_items` picks mispredicted items.
ORDERS = ("least_confident", "most_confident")


def select_items(evaluation, param, theta, n_items: int, order: str = "least_confident") -> np.ndarray:
    """The ``n_items`` mispredicted items (margin < 0) of ``evaluation`` to trace back:
    ``least_confident`` = the margins closest to 0 first (those a few removals can fix),
    ``most_confident`` = the lowest margins first (the clearest errors). Ties by lower index."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")
    m = np.asarray(evaluation.margins(param, theta), dtype=np.float64).reshape(-1)
    wrong = np.flatnonzero(m < 0)
    key = -m[wrong] if order == "least_confident" else m[wrong]
    return wrong[np.argsort(key, kind="stable")][: int(n_items)]


def _item_gradient(engine, evaluation, item: int) -> torch.Tensor:
    if not 0 <= item < len(evaluation):
        raise ValueError(f"item {item} is out of range [0, {len(evaluation)}).")
    return evaluation.subset([item]).item_gradients(engine.objective.param, engine.theta_hat)[:, 0]


class CulpritScorer:
    """Culprit scores of test items against one engine and variant.

    On the first call it forms, in chunks of ``chunk`` pairs, the pair gradients ``(1/n) grad
    T_k`` (``T`` the variant's terms) and their shift norms ``||Delta theta(k)||``
    (:meth:`ecif.core.influence.ECIF.shift_norms`) and keeps them (memory ``n * P``). Each call
    then solves once, ``h_z = (H + mu I)^-1 grad l_z``, and returns ``{"is": -IS_z (n,), "ris":
    -RIS (n,)}`` with ``IS_z`` from one all-pairs forward-mode pass along ``h_z``
    (:meth:`~ecif.core.influence.ECIF.scores_along`) and ``RIS(k, z) = (1/n) grad T_k^T h_z /
    ||Delta theta(k)||``, the numbers of :meth:`~ecif.core.influence.ECIF.relative_influence`.
    """

    def __init__(self, engine, variant: str = "ecif", chunk: int = 256):
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of pairs, got {chunk}.")
        self.engine, self.variant, self.chunk = engine, variant, int(chunk)
        self.terms = VARIANT_TERMS.get(variant)
        if self.terms is None:
            raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(VARIANT_TERMS)}.")
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (gradients, norms) per chunk

    def _pair_parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            e, n = self.engine, self.engine.n
            self._pairs = []
            for start in range(0, n, self.chunk):
                idx = np.arange(start, min(start + self.chunk, n))
                g = e.objective.pair_gradients(e.theta_hat, self.terms, idx, 64) / n
                self._pairs.append((g, e.shift_norms(g)))
        return self._pairs

    def __call__(self, item_gradient) -> dict[str, np.ndarray]:
        e = self.engine
        g = torch.as_tensor(item_gradient, dtype=torch.float64, device=e.theta_hat.device)
        if g.shape != (e.objective.n_params,):
            raise ValueError(f"item_gradient must have shape ({e.objective.n_params},), got {tuple(g.shape)}.")
        h = e.solver.solve(g)
        is_z = e.scores_along(h, (self.variant,))[self.variant].cpu().numpy()
        ris = np.concatenate([((pg @ h) / norms.clamp_min(1e-300)).cpu().numpy() for pg, norms in self._pair_parts()])
        return {"is": -is_z, "ris": -ris}


def culprit_scores(engine, item_gradient, variant: str = "ecif", chunk: int = 256) -> dict[str, np.ndarray]:
    """``{"is": -IS_z (n,), "ris": -RIS (n,)}`` for one item's loss gradient ``(P,)`` (a one-off
    :class:`CulpritScorer`; keep a scorer to score several items)."""
    return CulpritScorer(engine, variant, chunk)(item_gradient)


def _scorer(engine, variant: str, scorer: CulpritScorer | None) -> CulpritScorer:
    """``scorer`` when given (it must score ``engine`` with ``variant``), else a new one."""
    if scorer is None:
        return CulpritScorer(engine, variant)
    if scorer.engine is not engine or scorer.variant != variant:
        raise ValueError(f"the scorer was built for another engine or variant (its variant {scorer.variant!r}, "
                         f"wanted {variant!r}): pass CulpritScorer(engine, {variant!r}) of this engine.")
    return scorer


def trace_gallery(engine, evaluation, items, top: int = 5, mask=None, method: str = "ris",
                  variant: str = "ecif", scorer: CulpritScorer | None = None) -> pd.DataFrame:
    """Top ``top`` culprit pairs of each item: columns ``item``, ``label``, ``predicted``,
    ``rank`` (0 = strongest culprit), ``pair``, ``score`` (culprit score of ``method``), and
    ``misaligned`` when ``mask (n,)`` is given. ``scorer``: a :class:`CulpritScorer` of
    ``engine`` and ``variant`` to reuse (its per-pair part is then not computed again)."""
    if method not in ("is", "ris"):
        raise ValueError(f"method must be 'is' or 'ris', got {method!r}.")
    scorer = _scorer(engine, variant, scorer)
    param = engine.objective.param
    pred = evaluation.predictions(param, engine.theta_hat)
    rows = []
    for z in np.atleast_1d(items):
        s = scorer(_item_gradient(engine, evaluation, int(z)))[method]
        for r, k in enumerate(np.argsort(-s, kind="stable")[:top]):
            row = {"item": int(z), "label": int(evaluation.labels[z]), "predicted": int(pred[z]), "rank": r,
                   "pair": int(k), "score": float(s[k])}
            if mask is not None:
                row["misaligned"] = bool(np.asarray(mask)[k])
            rows.append(row)
    return pd.DataFrame(rows)


def counterfactual_traceback(engine, evaluation, items, ks=(5, 10), n_random: int = 3, seed: int = 0,
                             variant: str = "ecif", mask=None, gtol: float = 1e-9,
                             preconditioner=None, scorer: CulpritScorer | None = None) -> pd.DataFrame:
    """Remove the top-``k`` culprits of each item (by ``ris`` and by ``is``) or ``k`` random
    pairs (``n_random`` draws), retrain, and record the item's zero-shot margin.

    One row per (item, method, draw, k): ``item``, ``method`` (``ris``/``is``/``random``),
    ``draw`` (random draw number, else 0), ``k``, ``margin_before``, ``margin_after``,
    ``fixed`` (margin after > 0, i.e. now predicted correctly), ``improved`` (margin grew),
    ``misaligned_removed`` (when ``mask`` is given), ``grad_norm``, ``converged``.
    Cost: ``len(items) * (2 + n_random) * len(ks)`` retrainings. ``scorer``: as in
    :func:`trace_gallery`.
    """
    ks = [int(k) for k in np.atleast_1d(ks)]
    n = engine.n
    if min(ks) < 1 or max(ks) > n // 2:
        raise ValueError(f"every k must lie in [1, n/2 = {n // 2}], got {ks}.")
    scorer = _scorer(engine, variant, scorer)
    param, obj, theta_hat = engine.objective.param, engine.objective, engine.theta_hat
    rng = np.random.default_rng(seed)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    rows = []
    for z in np.atleast_1d(items):
        z = int(z)
        sub = evaluation.subset([z])
        before = float(sub.margins(param, theta_hat)[0])
        s = scorer(_item_gradient(engine, evaluation, z))
        plans = []
        for k in ks:
            plans += [("ris", 0, k, np.argsort(-s["ris"], kind="stable")[:k]),
                      ("is", 0, k, np.argsort(-s["is"], kind="stable")[:k])]
            plans += [("random", d, k, rng.choice(n, k, replace=False)) for d in range(n_random)]
        for method, draw, k, removed in plans:
            res = retrain(obj, theta_hat, removed, gtol=gtol, preconditioner=preconditioner)
            after = float(sub.margins(param, res.theta)[0])
            rows.append({"item": z, "method": method, "draw": draw, "k": k, "margin_before": before,
                         "margin_after": after, "fixed": after > 0, "improved": after > before,
                         "misaligned_removed": np.nan if mask is None else int(mask[removed].sum()),
                         "grad_norm": res.grad_norm, "converged": res.converged})
    return pd.DataFrame(rows)
