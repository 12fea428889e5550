"""Detection scores of the baselines, and the conversion of influence scores to detection scores.

Every function returns a float64 numpy array ``(n,)`` in training-pair order with the kit's
detection convention: **higher = more suspicious / more harmful** (see :mod:`ecif.experiments.metrics`).

==================  =====================================================================
method              score of pair ``k``
==================  =====================================================================
``pair_loss``       ``Pos_k(theta)``: the pair's own symmetric InfoNCE terms (no ``1/n``)
``cosine``          ``-<u_k, v_k>``: negative cosine of the pair's normalised embeddings
                    (the CLIP-score filter: low image-text similarity is suspicious)
``random``          uniform ``[0, 1)`` from ``numpy.random.default_rng(seed)``
``tracin``          ``-(1/n) grad[T_k](theta)^T grad L_val(theta)``, ``T_k = Pos_k + Neg_k``
                    (ECIF with ``H`` replaced by the identity: one checkpoint, no Hessian)
ECIF etc.           ``harmfulness(IS) = -IS``
==================  =====================================================================

TracIn sign: removing ``k`` shifts the parameters by about ``(1/n) H^-1 grad T_k``; with
``H = I`` the validation loss changes by ``IS_tracin(k) = (1/n) grad T_k^T grad L_val``, and
``IS < 0`` (harmful) becomes a high detection score ``-IS``, exactly as for ECIF. A pair whose
own gradient points along the validation gradient (a "proponent") is helpful.
"""

from __future__ import annotations

import numpy as np
import torch

from ecif.core.terms import DTYPE, VARIANT_TERMS

__all__ = ["cosine_scores", "harmfulness", "pair_loss_scores", "random_scores", "tracin_scores"]


def _numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy().astype(np.float64)
    return np.asarray(t, dtype=np.float64)


def _theta(objective, theta) -> torch.Tensor:
    return objective.param.check_theta(torch.as_tensor(theta, dtype=DTYPE, device=objective.device))


def harmfulness(influence_scores) -> np.ndarray:
    """Detection score ``-IS`` from influence scores ``IS (n,)`` (``IS < 0``: removing the pair
    lowers the validation loss, i.e. harmful). Accepts numpy or torch; returns numpy ``(n,)``."""
    s = _numpy(influence_scores)
    if s.ndim != 1:
        raise ValueError(f"influence scores must be a 1-D array (n,), got shape {s.shape}.")
    return -s


def pair_loss_scores(objective, theta) -> np.ndarray:
    """``Pos_k(theta)`` for every pair ``(n,)``: the pair's own contrastive loss (row plus column
    InfoNCE terms of its batch, no ``1/n``). High loss = the model cannot align the pair."""
    return _numpy(objective.pair_terms(_theta(objective, theta))["pos"])


def cosine_scores(objective, theta) -> np.ndarray:
    """``-cos(u_k, v_k)`` for every pair ``(n,)``, in ``[-1, 1]``: the CLIP-score filter with the
    fine-tuned heads at ``theta`` (pass ``objective.theta0`` for the base model)."""
    with torch.no_grad():
        u, v = objective.embeddings(_theta(objective, theta))
    return -_numpy((u * v).sum(dim=1))


def random_scores(n: int, seed: int) -> np.ndarray:
    """Uniform random scores ``(n,)`` from ``numpy.random.default_rng(seed)``: the chance line."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}.")
    return np.random.default_rng(seed).random(int(n))


def tracin_scores(objective, theta, val_gradient, variant: str = "ecif") -> np.ndarray:
    """TracIn-style detection score at the final checkpoint, ``(n,)``:
    ``-(1/n) grad[T_k](theta)^T grad L_val(theta)`` with ``T_k`` the terms of ``variant``
    (default ``ecif``: ``Pos_k + Neg_k``; ``"positive"`` gives the classical TracIn on the
    pair's own loss). No Hessian and no per-pair backward pass: one forward-mode pass of
    :meth:`~ecif.core.objective.ContrastiveObjective.directional_terms` along ``grad L_val``.
    Higher = more harmful (see the module docstring for the sign)."""
    if variant not in VARIANT_TERMS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(VARIANT_TERMS)}.")
    g = torch.as_tensor(val_gradient, dtype=DTYPE, device=objective.device)
    if g.shape != (objective.n_params,):
        raise ValueError(f"val_gradient must have shape ({objective.n_params},), got {tuple(g.shape)}.")
    d = objective.directional_terms(_theta(objective, theta), g)
    return -_numpy(sum(d[t] for t in VARIANT_TERMS[variant])) / objective.n
