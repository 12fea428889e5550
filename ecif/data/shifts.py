"""Test-time distribution shifts of a split: perturbed images or perturbed captions.

Unlike :mod:`ecif.data.noise` (which breaks the *pairing* of training data), a shift changes the
inputs a model sees at test time while the ground truth stays: the attributes of every pair, and
so its clean caption, are unchanged. Every function is deterministic given its ``seed``.

Visual shifts (uint8 images ``(n, H, W)`` or ``(n, H, W, C)``, same shape and dtype back):

- ``blur``: Gaussian blur with standard deviation ``sigma`` pixels (separable kernel, edges
  reflected);
- ``noise``: additive Gaussian noise of standard deviation ``std`` grey levels, clipped to [0, 255];
- ``dropout``: each pixel (all its channels) set to 0 with probability ``p``.

Text shifts (lists of captions):

- ``typo``: each letter, with probability ``rate``, suffers one keyboard-style error (swap with
  the next letter, deletion, substitution by a random letter, or a doubled letter);
- ``synonym``: each word found in a synonym table is replaced, with probability ``prob``, by one of
  its synonyms (:data:`SYNONYMS`, covering the ``shapes`` and ``digits`` vocabularies);
- ``token_dropout``: each word dropped with probability ``p`` (at least one word kept);
- ``retemplate``: the caption re-rendered from the pair's attributes with other templates
  (:data:`SHAPES_TEMPLATES` or given ones): same content, different wording and word order.

:func:`apply_shift` applies one named shift at one of three severity levels (:data:`LEVELS`) to a
:class:`~ecif.data.pairs.Split` and returns the shifted split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ecif.data.pairs import TEMPLATE, Split

VISUAL = ("blur", "noise", "dropout")
TEXT = ("typo", "synonym", "token_dropout", "retemplate")
KINDS = VISUAL + TEXT

#: Severity levels 1, 2, 3 of each shift: the parameter of its function.
LEVELS: dict[str, tuple] = {
    "blur": (0.6, 1.2, 2.4),          # sigma in pixels (images of 32 px)
    "noise": (20.0, 45.0, 90.0),      # std in grey levels
    "dropout": (0.1, 0.3, 0.6),       # pixel drop probability
    "typo": (0.03, 0.08, 0.2),        # per-letter error probability
    "synonym": (0.3, 0.6, 1.0),       # replacement probability of a known word
    "token_dropout": (0.1, 0.25, 0.5),  # word drop probability
    "retemplate": (1, 2, 3),          # number of alternative templates drawn from
}

SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("little", "tiny"), "large": ("big", "huge"),
    "red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("azure", "navy"),
    "yellow": ("golden", "amber"), "purple": ("violet", "lilac"),
    "circle": ("disc", "ring"), "square": ("box", "block"), "triangle": ("wedge", "pyramid"),
    "top": ("upper",), "bottom": ("lower",), "center": ("middle", "centre"),
    "left": ("left-hand",), "right": ("right-hand",),
    "a": ("one",), "at": ("in",), "the": ("this",),
    "handwritten": ("hand-drawn", "scribbled"), "digit": ("number", "numeral"),
    "photo": ("picture", "image"),
}

#: Alternative templates of the ``shapes`` captions (the original is
#: "a {size} {color} {shape} at the {position}").
SHAPES_TEMPLATES = (
    "{position}: a {color} {shape}, {size}",
    "there is a {size} {shape} in {color} at the {position}",
    "the {position} holds a {size} {color} {shape}",
)


def _rng(seed: int, kind: str, extra: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), KINDS.index(kind), int(extra)])


# ---------------------------------------------------------------------------------- visual


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of uint8 images along their two spatial axes (``sigma`` in pixels)."""
    if sigma <= 0:
        return images.copy()
    img = images.astype(np.float64)
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        padded = np.pad(img, pad, mode="reflect")
        out = np.zeros_like(img)
        size = img.shape[axis]
        for i, w in enumerate(k):
            out += w * np.take(padded, np.arange(i, i + size), axis=axis)
        img = out
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def additive_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``std`` (grey levels); clip to [0, 255]."""
    rng = _rng(seed, "noise")
    noisy = images.astype(np.float64) + rng.normal(0.0, std, size=images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def pixel_dropout(images: np.ndarray, p: float, seed: int = 0) -> np.ndarray:
    """Set each pixel (all channels) to 0 with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    rng = _rng(seed, "dropout")
    keep = rng.random(images.shape[:3]) >= p
    if images.ndim == 4:
        keep = keep[..., None]
    return (images * keep).astype(np.uint8)


# ------------------------------------------------------------------------------------ text

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typos(captions: list[str], rate: float, seed: int = 0) -> list[str]:
    """Keyboard-style character errors: each letter, with probability ``rate``, is swapped with
    the next character, deleted, substituted or doubled (one of the four at random)."""
    rng = _rng(seed, "typo")
    out = []
    for text in captions:
        chars = list(text)
        res: list[str] = []
        i = 0
        while i < len(chars):
            c = chars[i]
            if c.isalpha() and rng.random() < rate:
                op = int(rng.integers(4))
                if op == 0 and i + 1 < len(chars):  # swap with the next character
                    res += [chars[i + 1], c]
                    i += 2
                    continue
                if op == 1:  # deletion
                    pass
                elif op == 2:  # substitution by another letter
                    res.append(_LETTERS[(_LETTERS.index(c.lower()) + 1 + int(rng.integers(25))) % 26]
                               if c.lower() in _LETTERS else c)
                else:  # doubled letter (also the swap's fallback at the end)
                    res += [c, c]
            else:
                res.append(c)
            i += 1
        out.append("".join(res) or text)
    return out


def synonyms(captions: list[str], prob: float, seed: int = 0,
             table: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Replace each word found in ``table`` (default :data:`SYNONYMS`) with probability ``prob``
    by one of its synonyms (uniformly)."""
    table = SYNONYMS if table is None else table
    rng = _rng(seed, "synonym")
    out = []
    for text in captions:
        words = text.split(" ")
        for j, w in enumerate(words):
            if w in table and rng.random() < prob:
                alts = table[w]
                words[j] = alts[int(rng.integers(len(alts)))]
        out.append(" ".join(words))
    return out


def token_dropout(captions: list[str], p: float, seed: int = 0) -> list[str]:
    """Drop each word with probability ``p``; a caption keeps at least one (random) word."""
    rng = _rng(seed, "token_dropout")
    out = []
    for text in captions:
        words = text.split(" ")
        keep = rng.random(len(words)) >= p
        if not keep.any():
            keep[int(rng.integers(len(words)))] = True
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def retemplate(split: Split, n_templates: int = 3, seed: int = 0,
               templates: tuple[str, ...] | None = None) -> list[str]:
    """Captions of ``split`` re-rendered from its attributes with one of the first
    ``n_templates`` alternative templates per pair (drawn uniformly; default
    :data:`SHAPES_TEMPLATES`). Needs the split's caption spec."""
    spec = split.spec
    if spec is None:
        raise ValueError("the split carries no caption spec: cannot re-render its captions")
    if templates is None:
        if set(spec.values) != {"size", "color", "shape", "position"}:
            raise ValueError("the default alternative templates are for the shapes data set; pass templates=")
        templates = SHAPES_TEMPLATES
    templates = tuple(templates)
    pool = templates[: max(1, min(int(n_templates), len(templates)))]
    rng = _rng(seed, "retemplate")
    alt = replace(spec, templates=pool)
    attrs = dict(split.attributes)
    attrs[TEMPLATE] = rng.integers(0, len(pool), size=len(split)).astype(np.int64)
    return alt.render(attrs)


# ---------------------------------------------------------------------------- one interface


def apply_shift(split: Split, kind: str, level: int, seed: int = 0) -> Split:
    """``split`` with shift ``kind`` at severity ``level`` (1, 2 or 3) applied: new images for a
    visual kind, new captions for a text kind. Attributes, labels and index are kept, so the
    pairs' clean captions remain ``spec.render(attributes)``. ``kind="none"`` returns a copy."""
    if kind == "none":
        return replace(split, captions=list(split.captions))
    if kind not in KINDS:
        raise ValueError(f"unknown shift {kind!r}; choose one of {KINDS} or 'none'")
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    value = LEVELS[kind][level - 1]
    if kind == "blur":
        return replace(split, images=gaussian_blur(split.images, value))
    if kind == "noise":
        return replace(split, images=additive_noise(split.images, value, seed))
    if kind == "dropout":
        return replace(split, images=pixel_dropout(split.images, value, seed))
    if kind == "typo":
        caps = typos(split.captions, value, seed)
    elif kind == "synonym":
        caps = synonyms(split.captions, value, seed)
    elif kind == "token_dropout":
        caps = token_dropout(split.captions, value, seed)
    else:
        caps = retemplate(split, value, seed)
    return replace(split, captions=caps)


def modality(kind: str) -> str:
    """``"visual"``, ``"text"`` or ``"none"``."""
    return "visual" if kind in VISUAL else "text" if kind in TEXT else "none"
