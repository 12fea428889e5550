"""Synthetic frozen CLIP-style features with class structure, for tests and benchmarks.

Images and captions share a latent class prototype: ``x = A (z_c + noise) + noise`` and
``y = B (z_c + noise) + noise`` with random linear maps ``A``, ``B``. A fraction of captions can
be shuffled (misaligned) so that influence has something to find. Deterministic from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticPairs", "synthetic_pairs"]


@dataclass
class SyntheticPairs:
    """Arrays of a synthetic problem (all float64 unless stated).

    ``x (n, d_img)``, ``y (n, d_txt)``: train features (``y`` already misaligned where
    ``misaligned``); ``labels (n,)`` int; ``misaligned (n,)`` bool; ``x_val``, ``y_val``,
    ``labels_val``: clean validation pairs; ``class_text (C, d_txt)``: class-prompt features;
    ``w_img0 (e, d_img)``, ``w_txt0 (e, d_txt)``: base projections; ``log_scale0``.
    """

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    misaligned: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels_val: np.ndarray
    class_text: np.ndarray
    w_img0: np.ndarray
    w_txt0: np.ndarray
    log_scale0: float


def synthetic_pairs(n: int, n_val: int = 200, d_img: int = 8, d_txt: int = 8, width: int = 4,
                    n_classes: int = 5, latent: int = 4, noise: float = 0.5, shuffle_rate: float = 0.1,
                    log_scale0: float = np.log(5.0), base_noise: float = 0.3,
                    seed: int = 0) -> SyntheticPairs:
    """Draw a synthetic pair problem; ``round(shuffle_rate * n)`` captions are cyclically
    rotated among pairs of different classes (so every chosen caption really changes)."""
    if not 0 <= shuffle_rate < 1:
        raise ValueError(f"shuffle_rate must lie in [0, 1), got {shuffle_rate}.")
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(n_classes, latent)) * 1.5
    a = rng.normal(size=(d_img, latent))
    b = rng.normal(size=(d_txt, latent))

    def draw(m):
        lab = rng.integers(0, n_classes, size=m)
        z_img = protos[lab] + noise * rng.normal(size=(m, latent))
        z_txt = protos[lab] + noise * rng.normal(size=(m, latent))
        xx = z_img @ a.T + 0.1 * rng.normal(size=(m, d_img))
        yy = z_txt @ b.T + 0.1 * rng.normal(size=(m, d_txt))
        return xx, yy, lab

    x, y, labels = draw(n)
    x_val, y_val, labels_val = draw(n_val)
    k = int(round(shuffle_rate * n))
    misaligned = np.zeros(n, dtype=bool)
    if k >= 2:
        order = rng.permutation(n)
        chosen = []
        for i in order:  # greedily pick pairs so that consecutive picks have different classes
            if not chosen or labels[i] != labels[chosen[-1]]:
                chosen.append(i)
            if len(chosen) == k:
                break
        chosen = np.array(chosen)
        if labels[chosen[0]] == labels[chosen[-1]]:
            chosen = chosen[:-1]
        y[chosen] = y[np.roll(chosen, 1)]
        misaligned[chosen] = True
    class_text = protos @ b.T
    # a "pretrained" base: both towers map roughly to a shared rotation of the latent space,
    # perturbed by base_noise, so fine-tuning starts near a sensible model (as with CLIP)
    rot = np.linalg.qr(rng.normal(size=(max(width, latent), max(width, latent))))[0][:width, :latent]
    w_img0 = rot @ np.linalg.pinv(a) + base_noise * rng.normal(size=(width, d_img)) / np.sqrt(d_img)
    w_txt0 = rot @ np.linalg.pinv(b) + base_noise * rng.normal(size=(width, d_txt)) / np.sqrt(d_txt)
    return SyntheticPairs(x, y, labels, misaligned, x_val, y_val, labels_val, class_text, w_img0, w_txt0,
                          float(log_scale0))
