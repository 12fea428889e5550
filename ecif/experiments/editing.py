"""The ECIF-edited model against retraining (the paper's Table 2).

For a removal set ``R`` the edited model is ``theta_hat + Delta theta(R)`` (one solve with the
factorised Hessian, no retraining; :meth:`ecif.core.influence.ECIF.edited_params`), the reference is
the retrained ``theta_hat_{-R}`` (warm-started, :func:`ecif.experiments.retraining.retrain`). Wall times:
the edit's time excludes the one-off Hessian factorisation that every edit shares (report it
separately); the retraining time is the whole fit. With ``cold=True`` each set is also retrained
cold, from ``theta0`` (the paper's retraining, ``init="theta0"``), so the runtime table compares the
edit with both refits measured in one run.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ecif.core.evaluate import validation_loss
from ecif.experiments.retraining import retrain

__all__ = ["edit_vs_retrain", "removal_sets"]


def removal_sets(harm_scores, size: int, seeds=(0,)) -> dict[str, np.ndarray]:
    """Removal sets of ``size`` pairs each: ``harmful`` (the highest detection scores, i.e. the
    most suspicious first), ``valuable`` (the lowest) and one uniform ``random_<seed>`` set per
    seed in ``seeds``; index arrays, in that order."""
    harm_scores = harm_scores.detach().cpu() if isinstance(harm_scores, torch.Tensor) else harm_scores  # scores on a GPU
    s = np.asarray(harm_scores, dtype=np.float64).reshape(-1)
    if not 1 <= size <= s.size // 2:
        raise ValueError(f"size must lie in [1, n/2 = {s.size // 2}], got {size}.")
    order = np.argsort(-s, kind="stable")
    sets = {"harmful": order[:size], "valuable": order[::-1][:size]}
    sets.update({f"random_{seed}": np.sort(np.random.default_rng(seed).choice(s.size, size, replace=False))
                 for seed in seeds})
    return sets


def edit_vs_retrain(engine, sets: dict, val_objective, evaluation, variants=("ecif",),
                    gtol: float = 1e-9, preconditioner=None, cold: bool = False) -> pd.DataFrame:
    """Compare edited models with the retrained model for each removal set in ``sets`` (name ->
    indices); each set is retrained once and compared with the edit of every variant in
    ``variants`` (``"ecif"``: first-order negative role, ``"newton"``: exact removal terms; the
    group shift is additive, docs/math.md §10).

    One row per (set, variant): ``set``, ``variant``, ``size``, ``acc_base``, ``acc_edited``,
    ``acc_retrained`` (``evaluation``: a :class:`~ecif.experiments.zeroshot.ZeroShotSet`),
    ``predicted_val_change`` (first order, ``grad L_val(theta_hat)^T Delta theta``),
    ``edited_val_change`` (``L_val`` at the edited model minus base: the first-order prediction
    plus the curvature of ``L_val`` along the edit), ``actual_val_change`` (retrained minus
    base), ``param_distance`` (``||edited - retrained||``), ``shift_rel_error``
    (``||edited - retrained|| / ||retrained - theta_hat||``: how well the edit reproduces the
    retrained parameters, not just the loss), ``edit_s``, ``retrain_s``,
    ``retrain_grad_norm``, ``retrain_converged``. With ``cold=True`` also the cold retraining
    from ``theta0`` (once per set): ``acc_cold_retrained``, ``cold_warm_distance``
    (``||cold - warm||``: nonzero when the cold fit lands in another basin),
    ``cold_retrain_grad_norm``, ``cold_retrain_converged`` and ``cold_retrain_s``."""
    if isinstance(variants, str):
        variants = (variants,)
    obj, theta_hat = engine.objective, engine.theta_hat
    param = obj.param
    base_val = validation_loss(val_objective, theta_hat)
    g_val = val_objective.gradient(theta_hat)
    acc_base = evaluation.accuracy(param, theta_hat)
    rows = []
    for name, idx in sets.items():
        t0 = time.perf_counter()
        res = retrain(obj, theta_hat, idx, gtol=gtol, preconditioner=preconditioner)
        retrain_s = time.perf_counter() - t0
        moved = float((res.theta - theta_hat).norm())
        acc_retrained = evaluation.accuracy(param, res.theta)
        actual = validation_loss(val_objective, res.theta) - base_val
        extra = {}
        if cold:
            t0 = time.perf_counter()
            res_cold = retrain(obj, theta_hat, idx, init="theta0", gtol=gtol)
            cold_s = time.perf_counter() - t0
            extra = {"acc_cold_retrained": evaluation.accuracy(param, res_cold.theta),
                     "cold_warm_distance": float((res_cold.theta - res.theta).norm()),
                     "cold_retrain_grad_norm": res_cold.grad_norm, "cold_retrain_converged": res_cold.converged,
                     "cold_retrain_s": cold_s}
        for variant in variants:
            t0 = time.perf_counter()
            shift = engine.param_shift(idx, variant)
            edited = theta_hat + shift
            edit_s = time.perf_counter() - t0
            dist = float((edited - res.theta).norm())
            rows.append({
                "set": name, "variant": variant, "size": len(np.atleast_1d(idx)), "acc_base": acc_base,
                "acc_edited": evaluation.accuracy(param, edited), "acc_retrained": acc_retrained,
                "predicted_val_change": float(g_val @ shift),
                "edited_val_change": validation_loss(val_objective, edited) - base_val,
                "actual_val_change": actual,
                "param_distance": dist, "shift_rel_error": dist / moved if moved > 0 else float("nan"),
                "edit_s": edit_s, "retrain_s": retrain_s,
                "retrain_grad_norm": res.grad_norm, "retrain_converged": res.converged, **extra,
            })
    return pd.DataFrame(rows)
