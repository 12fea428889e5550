"""Misalignment injection: corrupt a controlled fraction of a split's captions, with ground truth.

``inject(split, kind, rate, seed)`` picks exactly ``m = floor(rate * n + 0.5)`` pairs
(round half up) of an ``n``-pair split and changes their captions; images never change. It
returns a :class:`Corruption` with the new captions and attribute codes and a boolean mask
(n,) that is true exactly where the caption text changed. Kinds:

- ``shuffle``: the chosen pairs' captions are permuted among themselves (the paper's shuffled
  labels). The permutation is a derangement *of caption text*: every chosen pair receives a
  caption whose text differs from its own. With label data many captions are identical, so a
  random permutation is drawn and then repaired by swaps (never creating new clashes) until no
  chosen pair keeps its text. It needs m >= 2 and no caption text held by more than half of
  the chosen pairs; the chosen set is re-drawn (seeded) a few times before raising.
- ``label_flip``: labelled data; each chosen pair's label attribute is set to a uniformly drawn
  *other* class and the caption re-rendered with the same template.
- ``attribute_swap``: compositional data (``shapes``); one attribute of the caption is changed
  (e.g. the colour). Per pair: a random attribute (or the one given) gets a random other value.
  With ``systematic=True`` the same swap ``attribute: source -> target`` (e.g. color red ->
  blue) is applied to every corrupted pair, and only pairs holding ``source`` are chosen. When
  ``source`` is left unset and its most frequent value has fewer than ``m`` pairs, the rule
  grows to the next most frequent values, each with its own fixed target outside the sources
  (e.g. red -> blue and yellow -> green): still a deterministic function of the true value, so
  the model can learn it. ``details["swaps"]`` lists the rules, ``details["swap"]`` the first.

``save_corruption`` writes the result next to the data: ``noise_mask.npy`` (bool),
``noise_captions.json``, ``noise_attributes.csv`` and ``noise.json`` (kind, rate, seed, swap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ecif.data.pairs import TEMPLATE, CaptionSpec, Split

KINDS = ("shuffle", "label_flip", "attribute_swap")


@dataclass
class Corruption:
    """Corrupted captions of a split and their ground truth.

    Attributes:
        captions: list of n captions actually paired with the images after corruption.
        attributes: caption attribute codes after corruption (name -> int array (n,)).
        mask: bool array (n,), True where the pair was corrupted (its caption text changed).
        caption_labels: class label the corrupted caption names (int (n,)), or None.
        kind, rate, seed: the request.
        details: extra ground truth: ``source`` (shuffle: int (n,) index whose caption a pair
            received, -1 if unchanged), ``swapped_attribute`` (attribute_swap/label_flip: the
            attribute changed per pair, '' if unchanged), ``swap`` (systematic: (attribute,
            source value, target value)).
    """

    captions: list[str]
    attributes: dict[str, np.ndarray]
    mask: np.ndarray
    caption_labels: np.ndarray | None
    kind: str
    rate: float
    seed: int
    details: dict = field(default_factory=dict)

    def apply(self, split: Split) -> Split:
        """The split with its captions replaced by the corrupted ones; ``labels`` stay the
        images' true labels."""
        return replace(split, captions=list(self.captions), attributes={k: v.copy() for k, v in self.attributes.items()})


def n_corrupted(rate: float, n: int) -> int:
    """Number of corrupted pairs: round(rate * n), halves rounded up."""
    return int(np.floor(rate * n + 0.5))


def _check(split: Split, spec: CaptionSpec, kind: str, rate: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown misalignment kind {kind!r}; choose one of {KINDS}")
    if not (isinstance(rate, (int, float)) and 0.0 <= float(rate) < 1.0):
        raise ValueError(f"rate must be in [0, 1), got {rate!r}; it is the fraction of pairs to corrupt")
    if kind == "label_flip" and (spec.label_attribute is None or split.labels is None):
        raise ValueError("label_flip needs a labelled data set (digits, shapes, cifar10, ...); use kind='shuffle' for unlabelled data")
    if kind == "label_flip" and not any("{" + spec.label_attribute + "}" in t for t in spec.templates):
        raise ValueError("label_flip rewrites the class named in a caption, but these captions do not name their label "
                         "(free-text captions of a caption folder); use kind='shuffle'")
    if kind == "label_flip" and len(spec.values[spec.label_attribute]) < 2:
        raise ValueError("label_flip needs at least two classes")
    if kind == "attribute_swap" and not spec.compositional:
        raise ValueError(
            "attribute_swap needs a compositional data set whose captions are built from several "
            "attributes (e.g. 'shapes'); use kind='label_flip' or 'shuffle' for label data sets"
        )


def _derange_text(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Permutation p of range(m) with codes[p[i]] != codes[i] for all i, or None if none found.

    ``codes`` are integer ids of caption texts (equal id = identical text). A uniform random
    permutation is drawn, then every position that kept its own text is swapped with a random
    partner such that neither position keeps its text afterwards; such a swap removes at least
    one clash and creates none, so the loop ends after at most m swaps.
    """
    m = len(codes)
    p = rng.permutation(m)
    for _ in range(m + 1):
        bad = np.flatnonzero(codes[p] == codes)
        if len(bad) == 0:
            return p
        i = bad[0]
        ok = np.flatnonzero((codes[p] != codes[i]) & (codes != codes[p[i]]))
        if len(ok) == 0:
            return None
        j = ok[rng.integers(len(ok))]
        p[i], p[j] = p[j], p[i]
    return None


def _shuffle(split, m, rng, attrs):
    n = len(split)
    _, text_id = np.unique(np.asarray(split.captions, dtype=object).astype(str), return_inverse=True)
    for _ in range(20):
        chosen = np.sort(rng.choice(n, size=m, replace=False))
        p = _derange_text(text_id[chosen], rng)
        if p is not None:
            break
    else:
        raise ValueError(
            f"shuffle could not derange the captions of {m} pairs so that every chosen pair gets a different "
            "caption text (too few pairs, or one caption holds more than half of them); use a larger rate or kind='label_flip'"
        )
    source = np.full(n, -1, dtype=np.int64)
    source[chosen] = chosen[p]
    for k in attrs:
        attrs[k][chosen] = attrs[k][chosen[p]]
    return chosen, {"source": source}


def _label_flip(split, spec, m, rng, attrs):
    n, a = len(split), spec.label_attribute
    c = len(spec.values[a])
    chosen = np.sort(rng.choice(n, size=m, replace=False))
    attrs[a][chosen] = (attrs[a][chosen] + rng.integers(1, c, size=m)) % c
    return chosen, {"swapped_attribute": _which(n, chosen, a)}


def _which(n, chosen, names):
    out = np.full(n, "", dtype=object)
    out[chosen] = names
    return out


def _attribute_swap(split, spec, m, rng, attrs, attribute, source, target, systematic):
    n = len(split)
    names = [a for a in spec.values if len(spec.values[a]) > 1]
    if attribute is not None and attribute not in names:
        raise ValueError(f"attribute {attribute!r} cannot be swapped; choose one of {names}")
    if not systematic:
        if source is not None or target is not None:
            raise ValueError("source/target values only apply with systematic=True")
        chosen = np.sort(rng.choice(n, size=m, replace=False))
        which = np.array([attribute] * m if attribute else [names[i] for i in rng.integers(0, len(names), size=m)], dtype=object)
        for a in sorted(set(which)):  # sorted: set order of str varies with PYTHONHASHSEED
            rows = chosen[which == a]
            c = len(spec.values[a])
            attrs[a][rows] = (attrs[a][rows] + rng.integers(1, c, size=len(rows))) % c
        return chosen, {"swapped_attribute": _which(n, chosen, which)}
    attribute = attribute or ("color" if "color" in names else names[0])
    vals = spec.values[attribute]
    for v in (source, target):
        if v is not None and v not in vals:
            raise ValueError(f"{v!r} is not a value of attribute {attribute!r}; values: {vals}")
    counts = np.bincount(attrs[attribute], minlength=len(vals))
    if source is None:
        # the smallest rule that covers m pairs: the most frequent value, then the next ones
        order = [int(c) for c in np.argsort(-counts, kind="stable") if vals[int(c)] != target]
        sources, covered = [], 0
        for c in order:
            if covered >= m:
                break
            sources.append(vals[c])
            covered += int(counts[c])
        free = [v for v in vals if v not in sources]
        if covered < m or not free:
            raise ValueError(
                f"a systematic {attribute} swap cannot corrupt {m} of {n} pairs: its rule needs target "
                "values outside its source values; lower the rate or swap an attribute with more values"
            )
        targets = [target if target is not None else free[int(rng.integers(len(free)))] for _ in sources]
    else:
        if target is None:
            others = [v for v in vals if v != source]
            target = others[int(rng.integers(len(others)))]
        if source == target:
            raise ValueError(f"systematic swap needs source != target, got {source!r} -> {target!r}")
        sources, targets = [source], [target]
        if counts[vals.index(source)] < m:
            raise ValueError(
                f"systematic swap {attribute}: {source} -> {target} needs {m} pairs with {attribute}={source!r} "
                f"but the split has only {counts[vals.index(source)]}; lower the rate or choose a more frequent "
                "source value (or leave source unset: the rule then grows to the next most frequent values)"
            )
    mapping = np.arange(len(vals))
    for src, tgt in zip(sources, targets):
        mapping[vals.index(src)] = vals.index(tgt)
    eligible = np.flatnonzero(np.isin(attrs[attribute], [vals.index(v) for v in sources]))
    chosen = np.sort(rng.choice(eligible, size=m, replace=False))
    attrs[attribute][chosen] = mapping[attrs[attribute][chosen]]
    rules = [(attribute, src, tgt) for src, tgt in zip(sources, targets)]
    return chosen, {"swapped_attribute": _which(n, chosen, attribute), "swap": rules[0], "swaps": rules}


def inject(
    split: Split,
    kind: str,
    rate: float,
    seed: int = 0,
    *,
    spec: CaptionSpec | None = None,
    attribute: str | None = None,
    source: str | None = None,
    target: str | None = None,
    systematic: bool = False,
    out_dir: str | Path | None = None,
) -> Corruption:
    """Corrupt exactly ``round(rate * n)`` pairs of ``split`` (see the module docstring).

    Args:
        split: the (train) split to corrupt; it is not modified.
        kind: ``shuffle``, ``label_flip`` or ``attribute_swap``.
        rate: fraction of pairs to corrupt, in [0, 1).
        seed: seed of every random choice.
        spec: the data set's caption spec; default ``split.spec``.
        attribute: attribute_swap only: the attribute to change (default: random per pair;
            systematic: ``color`` if present).
        source, target: systematic swap values (default: the most frequent value -> a random other one).
        systematic: attribute_swap only: the same swap for every corrupted pair.
        out_dir: if given, the result is also saved there with :func:`save_corruption`.

    Returns:
        :class:`Corruption`; ``mask[i]`` is True iff ``captions[i] != split.captions[i]``.

    Raises:
        ValueError: rate outside [0, 1), unknown kind, kind unsupported by the data set, or
            an impossible request (e.g. too few pairs with the systematic source value).
    """
    spec = spec if spec is not None else split.spec
    if spec is None:
        raise ValueError("the split carries no caption spec; pass spec=dataset.spec")
    _check(split, spec, kind, rate)
    if kind != "attribute_swap" and (systematic or attribute or source or target):
        raise ValueError("attribute, source, target and systematic only apply to kind='attribute_swap'")
    n = len(split)
    m = n_corrupted(rate, n)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    attrs = {k: v.copy() for k, v in split.attributes.items()}
    details: dict = {}
    if m > 0:
        if kind == "shuffle":
            chosen, details = _shuffle(split, m, rng, attrs)
        elif kind == "label_flip":
            chosen, details = _label_flip(split, spec, m, rng, attrs)
        else:
            chosen, details = _attribute_swap(split, spec, m, rng, attrs, attribute, source, target, systematic)
    else:
        chosen = np.zeros(0, dtype=np.int64)
    captions = list(split.captions)
    if m > 0:
        new = spec.render({k: v[chosen] for k, v in attrs.items()})
        for i, c in zip(chosen, new):
            captions[i] = c
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    changed = np.array([a != b for a, b in zip(captions, split.captions)], dtype=bool)
    if not np.array_equal(changed, mask):  # defensive: the mask is the text change, by construction
        raise AssertionError("internal error: a corrupted caption equals its original text")
    labels = None if spec.label_attribute is None else attrs[spec.label_attribute].copy()
    out = Corruption(captions, attrs, mask, labels, kind, float(rate), int(seed), details)
    if out_dir is not None:
        save_corruption(out, out_dir, spec)
    return out


def save_corruption(c: Corruption, folder: str | Path, spec: CaptionSpec | None = None) -> Path:
    """Write ``noise_mask.npy``, ``noise_captions.json``, ``noise_attributes.csv`` and
    ``noise.json`` into ``folder``; returns the folder."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "noise_mask.npy", c.mask)
    (folder / "noise_captions.json").write_text(json.dumps(c.captions, indent=0))
    table = pd.DataFrame({k: v for k, v in c.attributes.items()})
    table.insert(0, "corrupted", c.mask)
    for k in ("source", "swapped_attribute"):
        if k in c.details:
            table[k] = c.details[k]
    table.to_csv(folder / "noise_attributes.csv", index=False)
    meta = {"kind": c.kind, "rate": c.rate, "seed": c.seed, "n": int(len(c.mask)), "n_corrupted": int(c.mask.sum())}
    if "swap" in c.details:
        meta["swap"] = list(c.details["swap"])
        meta["swaps"] = [list(r) for r in c.details.get("swaps", [c.details["swap"]])]
    (folder / "noise.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_corruption(folder: str | Path) -> Corruption:
    """Read a corruption written by :func:`save_corruption`."""
    import pandas as pd

    folder = Path(folder)
    meta = json.loads((folder / "noise.json").read_text())
    table = pd.read_csv(folder / "noise_attributes.csv", keep_default_na=False)
    skip = {"corrupted", "source", "swapped_attribute"}
    attrs = {k: table[k].to_numpy(np.int64) for k in table.columns if k not in skip}
    details = {k: table[k].to_numpy() for k in ("source", "swapped_attribute") if k in table}
    if "swap" in meta:
        details["swap"] = tuple(meta["swap"])
        details["swaps"] = [tuple(r) for r in meta.get("swaps", [meta["swap"]])]
    mask = np.load(folder / "noise_mask.npy", allow_pickle=False)
    return Corruption(
        captions=json.loads((folder / "noise_captions.json").read_text()),
        attributes=attrs,
        mask=mask,
        caption_labels=None,
        kind=meta["kind"],
        rate=meta["rate"],
        seed=meta["seed"],
        details=details,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.data.noise inject --dataset digits --data data --kind shuffle --rate 0.2 --seed 0 --out DIR``."""
    import argparse

    from ecif.data.datasets import load_dataset

    p = argparse.ArgumentParser(prog="python -m ecif.data.noise", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("inject", help="corrupt the train split and save captions + ground-truth mask")
    c.add_argument("--dataset", default="digits")
    c.add_argument("--data", default=None)
    c.add_argument("--kind", required=True, choices=KINDS)
    c.add_argument("--rate", type=float, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--attribute", default=None)
    c.add_argument("--source", default=None)
    c.add_argument("--target", default=None)
    c.add_argument("--systematic", action="store_true")
    c.add_argument("--out", required=True)
    a = p.parse_args(argv)
    ds = load_dataset(a.dataset, root=a.data)
    res = inject(ds["train"], a.kind, a.rate, a.seed, attribute=a.attribute, source=a.source,
                 target=a.target, systematic=a.systematic, out_dir=a.out)
    print(f"corrupted {int(res.mask.sum())} of {len(res.mask)} train pairs ({a.kind}) -> {a.out}")


__all__ = ["KINDS", "Corruption", "inject", "n_corrupted", "save_corruption", "load_corruption", "TEMPLATE"]


if __name__ == "__main__":
    main()
