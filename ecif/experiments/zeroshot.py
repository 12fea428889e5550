"""Zero-shot evaluation: the kit's one way to ask "how good is this model on the test split".

A :class:`ZeroShotSet` holds frozen test image features, the text features of the class prompts
and the labels. For heads ``param`` at ``theta`` it embeds images with ``W_img(theta)`` and the
class prompts with ``W_txt(theta)``, normalises both, and predicts
``argmax_c  exp(t) <u, c>``. Accuracy, per-item margins, the mispredicted items and the gradients
of each item's zero-shot cross-entropy (the inputs of
:meth:`ecif.core.influence.ECIF.relative_influence`) are all computed from these logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jacrev

from ecif.core.terms import DTYPE, device_of

__all__ = ["ZeroShotSet"]


def _features(a, name: str) -> torch.Tensor:
    t = (a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), device="cpu")).to(DTYPE)
    if t.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions, got shape {tuple(t.shape)}.")
    return t


@dataclass
class ZeroShotSet:
    """Image features ``x (m, d_img)``, class-prompt text features ``class_text (C, d_txt)`` and
    integer labels ``labels (m,)`` in ``[0, C)``.

    ``x`` and ``class_text`` may be numpy arrays or tensors; they are kept as float64 tensors.
    ``labels`` is kept as a numpy int64 array.
    """

    x: torch.Tensor
    class_text: torch.Tensor
    labels: np.ndarray

    def __post_init__(self):
        self.x = _features(self.x, "x")
        self.class_text = _features(self.class_text, "class_text")
        labels = self.labels.detach().cpu().numpy() if isinstance(self.labels, torch.Tensor) else self.labels
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if self.x.shape[0] != self.labels.size:
            raise ValueError(f"ZeroShotSet: {self.x.shape[0]} images but {self.labels.size} labels.")
        n_classes = self.class_text.shape[0]
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got range "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}].")

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, items) -> ZeroShotSet:
        """The items ``items`` (indices) only."""
        items = np.asarray(items, dtype=np.int64)
        return ZeroShotSet(self.x[torch.as_tensor(items, device=self.x.device)], self.class_text, self.labels[items])

    def logits(self, param, theta) -> torch.Tensor:
        """Logits ``(m, C)`` = ``exp(t) <normalize(W_img x_i), normalize(W_txt c_j)>`` of the heads
        ``param`` at ``theta`` (differentiable in ``theta``)."""
        x, c = self.x, self.class_text
        if x.shape[1] != param.d_img or c.shape[1] != param.d_txt:
            raise ValueError(
                f"feature widths ({x.shape[1]}, {c.shape[1]}) do not match the parametrization "
                f"({param.d_img}, {param.d_txt})."
            )
        u = param.encode_images(theta, x)
        v = param.encode_texts(theta, c)
        u = u / u.norm(dim=1, keepdim=True)
        v = v / v.norm(dim=1, keepdim=True)
        return torch.exp(param.log_scale(theta)) * u @ v.T

    def _y(self) -> torch.Tensor:
        return torch.as_tensor(self.labels, device=self.x.device).long()

    def accuracy(self, param, theta) -> float:
        """Top-1 zero-shot accuracy in [0, 1]: the fraction of images whose highest-logit class
        equals the label."""
        logits = self.logits(param, theta)
        return float((logits.argmax(dim=1) == self._y()).double().mean())

    def predictions(self, param, theta) -> np.ndarray:
        """Predicted class ``(m,)``."""
        with torch.no_grad():
            return self.logits(param, theta).argmax(dim=1).cpu().numpy()

    def margins(self, param, theta) -> np.ndarray:
        """True-class logit minus the best other logit ``(m,)``; negative = mispredicted."""
        y = self._y()
        with torch.no_grad():
            logits = self.logits(param, theta)
            true = logits.gather(1, y[:, None])[:, 0]
            other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
            return (true - other).cpu().numpy()

    def mispredicted(self, param, theta) -> np.ndarray:
        """Indices of mispredicted items, most confidently wrong (lowest margin) first."""
        m = self.margins(param, theta)
        wrong = np.flatnonzero(m < 0)
        return wrong[np.argsort(m[wrong], kind="stable")]

    def item_gradients(self, param, theta) -> torch.Tensor:
        """Gradients ``(P, m)`` of each item's zero-shot cross-entropy ``l_z(theta)``, the inputs
        of :meth:`ecif.core.influence.ECIF.relative_influence`."""
        y = self._y()

        def losses(th):
            return torch.nn.functional.cross_entropy(self.logits(param, th), y, reduction="none")

        return jacrev(losses)(torch.as_tensor(theta, dtype=DTYPE, device=device_of(self.x))).T
