"""The types every data set is made of: :class:`Split`, :class:`Dataset`, :class:`CaptionSpec`.

A data set has four disjoint splits (``pretrain``: clean pairs for the encoder; ``train``: the
pairs that will be corrupted and analysed; ``val`` and ``test``: clean) and a caption spec that
renders captions from integer attribute codes, which is what lets :mod:`ecif.data.noise` change
one attribute of a caption and keep exact ground truth. Also the split helpers shared by the
loaders (:func:`split_sizes`, :func:`partition`, :func:`build`) and
:class:`DatasetUnavailableError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("pretrain", "train", "val", "test")

# Attribute name reserved for the index of the caption template used by a pair.
TEMPLATE = "template"


class DatasetUnavailableError(FileNotFoundError):
    """A real data set was asked for but is not on disk (and could not be downloaded)."""


@dataclass(frozen=True)
class CaptionSpec:
    """How captions are rendered from integer attribute codes.

    ``templates[t].format(**{a: values[a][code_a]})`` is the caption of a pair whose
    ``template`` code is ``t`` and whose attribute ``a`` has code ``code_a``.

    Attributes:
        templates: caption templates with ``{attribute}`` fields.
        values: attribute name -> list of value strings (the code is the list index).
        label_attribute: the attribute that is the class label (``None``: no labels).
        prompt_template: template of the zero-shot class prompts (uses ``label_attribute``).
        compositional: whether several attributes can be changed independently
            (``attribute_swap`` needs this).
    """

    templates: tuple[str, ...]
    values: dict[str, list[str]]
    label_attribute: str | None = None
    prompt_template: str | None = None
    compositional: bool = False

    def render(self, attributes: dict[str, np.ndarray]) -> list[str]:
        """Captions of ``n`` pairs from ``attributes`` (name -> int array (n,))."""
        n = len(next(iter(attributes.values())))
        tids = attributes.get(TEMPLATE, np.zeros(n, dtype=np.int64))
        names = [a for a in self.values]
        return [
            self.templates[int(tids[i])].format(
                **{a: self.values[a][int(attributes[a][i])] for a in names}
            )
            for i in range(n)
        ]

    @property
    def class_names(self) -> list[str] | None:
        """Class names (values of the label attribute), or ``None`` for unlabelled data."""
        return None if self.label_attribute is None else list(self.values[self.label_attribute])

    @property
    def class_prompts(self) -> list[str] | None:
        """One zero-shot prompt per class, e.g. "a handwritten digit seven"."""
        if self.label_attribute is None or self.prompt_template is None:
            return None
        return [self.prompt_template.format(**{self.label_attribute: c}) for c in self.class_names]

    def to_json(self) -> dict:
        return {
            "templates": list(self.templates),
            "values": self.values,
            "label_attribute": self.label_attribute,
            "prompt_template": self.prompt_template,
            "compositional": self.compositional,
        }

    @classmethod
    def from_json(cls, d: dict) -> "CaptionSpec":
        return cls(
            templates=tuple(d["templates"]),
            values={k: list(v) for k, v in d["values"].items()},
            label_attribute=d.get("label_attribute"),
            prompt_template=d.get("prompt_template"),
            compositional=bool(d.get("compositional", False)),
        )


@dataclass
class Split:
    """One split of image-caption pairs.

    Attributes:
        images: uint8 array (n, H, W) for grey images or (n, H, W, C).
        captions: list of n caption strings.
        attributes: attribute name -> int array (n,) of codes into ``CaptionSpec.values``
            (plus ``template``); captions are ``spec.render(attributes)``.
        index: int array (n,) of the pairs' positions in the source pool; disjoint across splits.
        labels: int array (n,) of class labels, or ``None``.
        spec: the data set's :class:`CaptionSpec` (lets a split be corrupted on its own).
    """

    images: np.ndarray
    captions: list[str]
    attributes: dict[str, np.ndarray]
    index: np.ndarray
    labels: np.ndarray | None = None
    spec: CaptionSpec | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, rows: np.ndarray) -> "Split":
        """The pairs at positions ``rows`` (int array) of this split, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Split(
            images=self.images[rows],
            captions=[self.captions[i] for i in rows],
            attributes={k: v[rows] for k, v in self.attributes.items()},
            index=self.index[rows],
            labels=None if self.labels is None else self.labels[rows],
            spec=self.spec,
        )


@dataclass
class Dataset:
    """A named data set: four disjoint splits and the caption spec that rendered them."""

    name: str
    splits: dict[str, Split]
    spec: CaptionSpec
    seed: int = 0
    info: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"data set {self.name!r} has no split {split!r}; splits: {list(self.splits)}")
        return self.splits[split]

    @property
    def class_names(self) -> list[str] | None:
        return self.spec.class_names

    @property
    def class_prompts(self) -> list[str] | None:
        return self.spec.class_prompts


# --------------------------------------------------------------------------------------------
# split helpers


def split_sizes(n: int, sizes: dict[str, int | float] | None, default: dict[str, float]) -> dict[str, int]:
    """Integer split sizes from fractions (<= 1) or counts; they must fit in ``n``."""
    sizes = dict(default if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
    out = {}
    for s in SPLITS:
        v = sizes.get(s, 0)
        out[s] = int(round(v * n)) if isinstance(v, float) and v <= 1.0 else int(v)
        if out[s] < 0:
            raise ValueError(f"split size for {s!r} is negative ({v})")
    if sum(out.values()) > n:
        raise ValueError(f"split sizes {out} sum to {sum(out.values())} > {n} available pairs; make them smaller")
    return out


def partition(n: int, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets of the given sizes from a seeded permutation of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for s in SPLITS:
        out[s] = np.sort(perm[start : start + counts[s]])
        start += counts[s]
    return out


def build(name, images, attributes, spec, parts, seed, info=None) -> Dataset:
    splits = {}
    for s, idx in parts.items():
        attrs = {k: v[idx] for k, v in attributes.items()}
        caps = spec.render(attrs) if len(idx) else []
        labels = None if spec.label_attribute is None else attrs[spec.label_attribute].astype(np.int64)
        splits[s] = Split(images=images[idx], captions=caps, attributes=attrs, index=idx.astype(np.int64), labels=labels, spec=spec)
    return Dataset(name=name, splits=splits, spec=spec, seed=seed, info=info or {})
