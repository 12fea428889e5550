"""Evaluation helpers: validation loss and zero-shot classification on frozen features.

Zero-shot classification embeds images with ``W_img(theta)`` and the class-name prompts with
``W_txt(theta)``, normalises both, and predicts ``argmax_c  exp(t) <u, c>``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import jacrev

from ecif.core.heads import Parametrization
from ecif.core.terms import DTYPE

__all__ = [
    "validation_loss",
    "validation_gradient",
    "zero_shot_logits",
    "zero_shot_accuracy",
    "zero_shot_margins",
    "zero_shot_item_gradients",
]


def validation_loss(val_objective, theta: torch.Tensor) -> float:
    """``L_val(theta)``: the validation objective (built with ``lam=0``), i.e. the symmetric
    InfoNCE summed per batch and divided by the number of validation pairs."""
    return float(val_objective.loss(torch.as_tensor(theta, dtype=DTYPE)))


def validation_gradient(val_objective, theta: torch.Tensor) -> torch.Tensor:
    """``grad L_val(theta)``, shape ``(P,)``."""
    if val_objective.lam != 0.0:
        raise ValueError("the validation objective must be built with lam=0 (no regulariser).")
    return val_objective.gradient(torch.as_tensor(theta, dtype=DTYPE))


def _tensor(a, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(DTYPE)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}.")
    return t


def zero_shot_logits(param: Parametrization, theta: torch.Tensor, x_img, class_text) -> torch.Tensor:
    """Logits ``(m, C)`` = ``exp(t) <normalize(W_img x_i), normalize(W_txt c_j)>`` for image
    features ``x_img (m, d_img)`` and class-prompt text features ``class_text (C, d_txt)``."""
    x, c = _tensor(x_img, "x_img", 2), _tensor(class_text, "class_text", 2)
    if x.shape[1] != param.d_img or c.shape[1] != param.d_txt:
        raise ValueError(
            f"feature widths ({x.shape[1]}, {c.shape[1]}) do not match the parametrization "
            f"({param.d_img}, {param.d_txt})."
        )
    u = x @ param.image_projection(theta).T
    v = c @ param.text_projection(theta).T
    u = u / u.norm(dim=1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True)
    return torch.exp(param.log_scale(theta)) * u @ v.T


def _labels(labels, m: int, n_classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape[0] != m:
        raise ValueError(f"got {y.shape[0]} labels for {m} images.")
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{int(y.min())}, {int(y.max())}].")
    return y


def zero_shot_accuracy(param, theta, x_img, class_text, labels) -> float:
    """Fraction of images whose highest-logit class equals the label."""
    logits = zero_shot_logits(param, theta, x_img, class_text)
    y = _labels(labels, logits.shape[0], logits.shape[1])
    return float((logits.argmax(dim=1) == y).double().mean())


def zero_shot_margins(param, theta, x_img, class_text, labels) -> torch.Tensor:
    """Margin ``(m,)``: true-class logit minus the best other logit (negative = mispredicted)."""
    logits = zero_shot_logits(param, theta, x_img, class_text)
    y = _labels(labels, logits.shape[0], logits.shape[1])
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - other


def zero_shot_item_gradients(param, theta, x_img, class_text, labels) -> torch.Tensor:
    """Gradients ``(P, m)`` of each item's zero-shot cross-entropy loss ``l_z(theta)``, the
    inputs of :meth:`ecif.core.influence.ECIF.relative_influence`."""
    x, c = _tensor(x_img, "x_img", 2), _tensor(class_text, "class_text", 2)
    y = _labels(labels, x.shape[0], c.shape[0])

    def losses(th):
        logits = zero_shot_logits(param, th, x, c)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    return jacrev(losses)(torch.as_tensor(theta, dtype=DTYPE)).T
