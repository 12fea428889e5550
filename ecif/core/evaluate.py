"""Validation objective helpers: ``L_val(theta)`` and its gradient."""

from __future__ import annotations

import torch

from ecif.core.terms import DTYPE, device_of

__all__ = ["validation_loss", "validation_gradient"]


def validation_loss(val_objective, theta: torch.Tensor) -> float:
    """``L_val(theta)``: the validation objective (built with ``lam=0``), i.e. the symmetric
    InfoNCE summed per batch and divided by the number of validation pairs."""
    return float(val_objective.loss(torch.as_tensor(theta, dtype=DTYPE, device=device_of(val_objective.theta0))))


def validation_gradient(val_objective, theta: torch.Tensor) -> torch.Tensor:
    """``grad L_val(theta)``, shape ``(P,)``."""
    if val_objective.lam != 0.0:
        raise ValueError("the validation objective must be built with lam=0 (no regulariser).")
    return val_objective.gradient(torch.as_tensor(theta, dtype=DTYPE, device=device_of(val_objective.theta0)))

