"""A labelled zero-shot evaluation set (test images + class prompts), bundled for the experiments.

Thin wrapper over :mod:`ecif.core.evaluate`, so that cleaning, editing and trace-back helpers take one
argument for "how good is this model" instead of three arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ecif.core.evaluate import (
    zero_shot_accuracy,
    zero_shot_item_gradients,
    zero_shot_logits,
    zero_shot_margins,
)

__all__ = ["ZeroShotSet"]


@dataclass
class ZeroShotSet:
    """Image features ``x (m, d_img)``, class-prompt text features ``class_text (C, d_txt)`` and
    integer labels ``labels (m,)`` in ``[0, C)``."""

    x: np.ndarray
    class_text: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        if np.shape(self.x)[0] != self.labels.size:
            raise ValueError(f"ZeroShotSet: {np.shape(self.x)[0]} images but {self.labels.size} labels.")

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, items) -> ZeroShotSet:
        """The items ``items`` (indices) only."""
        items = np.asarray(items, dtype=np.int64)
        return ZeroShotSet(np.asarray(self.x)[items], self.class_text, self.labels[items])

    def accuracy(self, param, theta) -> float:
        """Top-1 zero-shot accuracy in [0, 1]."""
        return zero_shot_accuracy(param, theta, self.x, self.class_text, self.labels)

    def predictions(self, param, theta) -> np.ndarray:
        """Predicted class ``(m,)``."""
        with torch.no_grad():
            return zero_shot_logits(param, theta, self.x, self.class_text).argmax(dim=1).numpy()

    def margins(self, param, theta) -> np.ndarray:
        """True-class logit minus best other logit ``(m,)``; negative = mispredicted."""
        with torch.no_grad():
            return zero_shot_margins(param, theta, self.x, self.class_text, self.labels).numpy()

    def mispredicted(self, param, theta) -> np.ndarray:
        """Indices of mispredicted items, most confidently wrong (lowest margin) first."""
        m = self.margins(param, theta)
        wrong = np.flatnonzero(m < 0)
        return wrong[np.argsort(m[wrong], kind="stable")]

    def item_gradients(self, param, theta) -> torch.Tensor:
        """``grad l_z(theta)`` of each item's zero-shot cross-entropy, ``(P, m)``."""
        return zero_shot_item_gradients(param, theta, self.x, self.class_text, self.labels)
