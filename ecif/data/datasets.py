"""Image-caption data sets behind one interface, with fixed deterministic splits.

Every data set is a :class:`Dataset`: a name, four disjoint :class:`Split` objects
(``pretrain``: clean pairs for the encoder; ``train``: the pairs that will be corrupted and
analysed; ``val`` and ``test``: clean), and a :class:`CaptionSpec` that renders captions from
integer attribute codes. Rendering captions from attributes is what lets the noise module
(:mod:`ecif.data.noise`) change one attribute of a caption and keep exact ground truth.

Data sets:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download),
  captions such as "a handwritten digit seven" from a few templates.
- ``shapes``: a generated compositional set of coloured shapes with a size and a position
  ("a small red circle at the top left"), deterministic from a seed, any size.
- ``cifar10``, ``cifar100``, ``food101``, ``flowers102``, ``fgvc_aircraft``, ``dtd``: the
  paper's label data sets through torchvision, read from a local ``root`` (or downloaded with
  ``download=True`` where the network allows). Absent and offline: :class:`DatasetUnavailableError`
  at once, naming the data set and how to provide it.

On disk (``save_dataset`` / ``read_dataset``, and ``python -m ecif.data.datasets write data/``) a data
set is a folder with ``meta.json`` and, per split, ``{split}_images.npy`` (uint8),
``{split}_index.npy``, ``{split}_attributes.csv`` and ``{split}_captions.json``. No pickle.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("pretrain", "train", "val", "test")
EMBEDDED = ("digits", "shapes")
TORCHVISION = ("cifar10", "cifar100", "food101", "flowers102", "fgvc_aircraft", "dtd")

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


def _split_sizes(n: int, sizes: dict[str, int | float] | None, default: dict[str, float]) -> dict[str, int]:
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


def _partition(n: int, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets of the given sizes from a seeded permutation of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for s in SPLITS:
        out[s] = np.sort(perm[start : start + counts[s]])
        start += counts[s]
    return out


def _build(name, images, attributes, spec, parts, seed, info=None) -> Dataset:
    splits = {}
    for s, idx in parts.items():
        attrs = {k: v[idx] for k, v in attributes.items()}
        caps = spec.render(attrs) if len(idx) else []
        labels = None if spec.label_attribute is None else attrs[spec.label_attribute].astype(np.int64)
        splits[s] = Split(images=images[idx], captions=caps, attributes=attrs, index=idx.astype(np.int64), labels=labels, spec=spec)
    return Dataset(name=name, splits=splits, spec=spec, seed=seed, info=info or {})


# --------------------------------------------------------------------------------------------
# digits

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_SPEC = CaptionSpec(
    templates=(
        "a handwritten digit {digit}",
        "a photo of the number {digit}",
        "a scan of a handwritten {digit}",
        "the digit {digit}, written by hand",
    ),
    values={"digit": DIGIT_NAMES},
    label_attribute="digit",
    prompt_template="a handwritten digit {digit}",
)
DIGITS_DEFAULT_SIZES = {"pretrain": 0.5, "train": 0.2, "val": 0.15, "test": 0.15}


def digits(seed: int = 0, sizes: dict | None = None) -> Dataset:
    """scikit-learn's 8x8 digits as image-caption pairs.

    Images are uint8 (n, 8, 8), the 0..16 intensities scaled to 0..255. Each pair gets one of
    four caption templates (seeded). Default split fractions: pretrain 0.5, train 0.2, val 0.15,
    test 0.15 of the 1,797 images (898 / 359 / 270 / 270).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    n = len(images)
    rng = np.random.default_rng([seed, 1])
    attributes = {
        "digit": d.target.astype(np.int64),
        TEMPLATE: rng.integers(0, len(DIGIT_SPEC.templates), size=n).astype(np.int64),
    }
    parts = _partition(n, _split_sizes(n, sizes, DIGITS_DEFAULT_SIZES), seed)
    return _build("digits", images, attributes, DIGIT_SPEC, parts, seed, {"source": "sklearn.datasets.load_digits"})


# --------------------------------------------------------------------------------------------
# generated compositional shapes

SHAPE_VALUES = {
    "size": ["small", "large"],
    "color": ["red", "green", "blue", "yellow", "purple"],
    "shape": ["circle", "square", "triangle"],
    "position": ["top left", "top right", "bottom left", "bottom right", "center"],
}
SHAPE_RGB = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 210, 40], [160, 60, 200]], dtype=np.float32)
SHAPES_SPEC = CaptionSpec(
    templates=("a {size} {color} {shape} at the {position}",),
    values=SHAPE_VALUES,
    label_attribute="shape",
    prompt_template="a photo of a {shape}",
    compositional=True,
)
SHAPES_DEFAULT_SIZES = {"pretrain": 1200, "train": 400, "val": 200, "test": 200}


def render_shapes(attributes: dict[str, np.ndarray], seed: int, image_size: int = 32) -> np.ndarray:
    """Draw one shape per image from attribute codes, vectorised over images.

    Args:
        attributes: codes ``size``, ``color``, ``shape``, ``position`` as int arrays (n,).
        seed: seed of the position jitter and the background noise.
        image_size: side of the square images.

    Returns:
        uint8 array (n, image_size, image_size, 3): a dark noisy background and a filled shape
        centred in its quadrant (or the centre) with +-1/16 of the side of jitter.
    """
    n = len(attributes["shape"])
    s = float(image_size)
    rng = np.random.default_rng([seed, 2])
    qx = np.array([0.25, 0.75, 0.25, 0.75, 0.5])[attributes["position"]]
    qy = np.array([0.25, 0.25, 0.75, 0.75, 0.5])[attributes["position"]]
    cx = (qx + rng.uniform(-1, 1, n) / 16) * s
    cy = (qy + rng.uniform(-1, 1, n) / 16) * s
    radius = np.where(attributes["size"] == 0, 0.11, 0.21) * s * rng.uniform(0.9, 1.1, n)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    r = radius[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # upward triangle: apex at cy - r, base at cy + r, half-width growing linearly to r
    triangle = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    mask = np.select([attributes["shape"][:, None, None] == k for k in range(3)], [circle, square, triangle])
    background = rng.normal(30.0, 8.0, size=(n, image_size, image_size, 3))
    colour = SHAPE_RGB[attributes["color"]][:, None, None, :]
    img = np.where(mask[..., None], colour, background)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def shapes(seed: int = 0, sizes: dict | None = None, image_size: int = 32) -> Dataset:
    """Generated coloured shapes with size and position; captions like "a small red circle at
    the top left". Attributes are drawn uniformly and independently (seeded), so every split
    carries exact attribute-level ground truth. Labels are the ``shape`` attribute (3 classes).
    Default sizes: pretrain 1200, train 400, val 200, test 200 (any counts allowed)."""
    counts = _split_sizes(10**9, sizes or SHAPES_DEFAULT_SIZES, SHAPES_DEFAULT_SIZES)
    n = sum(counts.values())
    rng = np.random.default_rng([seed, 3])
    attributes = {a: rng.integers(0, len(v), size=n).astype(np.int64) for a, v in SHAPE_VALUES.items()}
    attributes[TEMPLATE] = np.zeros(n, dtype=np.int64)
    images = render_shapes(attributes, seed, image_size)
    parts = _partition(n, counts, seed)
    return _build("shapes", images, attributes, SHAPES_SPEC, parts, seed, {"image_size": image_size})


# --------------------------------------------------------------------------------------------
# real data sets through torchvision

_TV = {
    # name: (torchvision class, how to select train / test, prompt template, how to get it)
    "cifar10": ("CIFAR10", "train", "a photo of a {label}"),
    "cifar100": ("CIFAR100", "train", "a photo of a {label}"),
    "food101": ("Food101", "split", "a photo of {label}, a type of food"),
    "flowers102": ("Flowers102", "split", "a photo of a {label}, a type of flower"),
    "fgvc_aircraft": ("FGVCAircraft", "split", "a photo of a {label}, a type of aircraft"),
    "dtd": ("DTD", "split", "a photo of a {label} texture"),
}
TV_DEFAULT_SIZES = {"pretrain": 5000, "train": 1000, "val": 500, "test": 1000}


def _tv_open(name: str, root: str | Path | None, train: bool, download: bool):
    """Instantiate the torchvision data set or raise DatasetUnavailableError at once."""
    import torchvision.datasets as tvd

    cls_name, how, _ = _TV[name]
    hint = (
        f"Provide it with root=<folder holding torchvision's {cls_name} files> "
        f"(e.g. `python -c \"import torchvision; torchvision.datasets.{cls_name}('<root>', download=True)\"` "
        f"on a machine with network, then copy the folder), or pass download=True where the network allows."
    )
    if root is None:
        raise DatasetUnavailableError(f"data set {name!r} is not embedded and no root folder was given. {hint}")
    kwargs = {"train": train} if how == "train" else {"split": "train" if train else "test"}
    if name == "fgvc_aircraft" and train:
        kwargs = {"split": "trainval"}
    try:
        return getattr(tvd, cls_name)(str(root), download=download, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:  # torchvision: "Dataset not found..."; URLError is OSError
        raise DatasetUnavailableError(f"data set {name!r} not found under {str(root)!r} ({e}). {hint}") from e


def _tv_classes(ds) -> list[str]:
    classes = getattr(ds, "classes", None)
    if classes is None:
        n = int(max(_tv_targets(ds))) + 1
        classes = [f"class {i}" for i in range(n)]
    return [str(c).replace("_", " ").replace("/", " ") for c in classes]


def _tv_targets(ds) -> np.ndarray:
    for attr in ("targets", "_labels", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def _tv_images(ds, rows: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (len(rows), S, S, 3): the images at ``rows``, shorter side resized to S, centre crop."""
    if hasattr(ds, "data") and isinstance(ds.data, np.ndarray) and ds.data.ndim == 4:
        imgs = ds.data[rows]
        if imgs.shape[1] == image_size and imgs.shape[2] == image_size:
            return imgs.astype(np.uint8)
    out = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
    for j, i in enumerate(rows):
        img = ds[int(i)][0].convert("RGB")
        w, h = img.size
        scale = image_size / min(w, h)
        img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))))
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        out[j] = np.asarray(img.crop((left, top, left + image_size, top + image_size)))
    return out


def torchvision_dataset(
    name: str,
    root: str | Path | None,
    seed: int = 0,
    sizes: dict | None = None,
    download: bool = False,
    image_size: int = 32,
) -> Dataset:
    """One of the paper's label data sets through torchvision, as image-caption pairs.

    ``pretrain``, ``train`` and ``val`` are disjoint seeded subsets of the official training
    split, ``test`` a seeded subset of the official test split. Captions use the standard CLIP
    template of the data set (e.g. "a photo of a {label}"). Images are uint8 (n, S, S, 3) with
    S = ``image_size`` (shorter side resized, centre crop).

    Raises:
        DatasetUnavailableError: at once if the files are not under ``root`` and
            ``download`` is false (or the download fails).
    """
    if name not in _TV:
        raise ValueError(f"unknown torchvision data set {name!r}; choose from {TORCHVISION}")
    counts = _split_sizes(10**9, sizes or TV_DEFAULT_SIZES, TV_DEFAULT_SIZES)
    tr = _tv_open(name, root, True, download)
    te = _tv_open(name, root, False, download)
    classes = _tv_classes(tr)
    spec = CaptionSpec(templates=(_TV[name][2],), values={"label": classes}, label_attribute="label", prompt_template=_TV[name][2])
    y_tr, y_te = _tv_targets(tr), _tv_targets(te)
    n_tr = counts["pretrain"] + counts["train"] + counts["val"]
    if n_tr > len(y_tr) or counts["test"] > len(y_te):
        raise ValueError(f"split sizes {counts} exceed {name!r}: {len(y_tr)} training and {len(y_te)} test images")
    perm = np.random.default_rng(seed).permutation(len(y_tr))
    bounds = np.cumsum([0, counts["pretrain"], counts["train"], counts["val"]])
    rows = {s: np.sort(perm[bounds[i] : bounds[i + 1]]) for i, s in enumerate(SPLITS[:3])}
    rows["test"] = np.sort(np.random.default_rng(seed).permutation(len(y_te))[: counts["test"]])
    splits = {}
    for s, r in rows.items():
        src, y = (te, y_te) if s == "test" else (tr, y_tr)
        attrs = {"label": y[r], TEMPLATE: np.zeros(len(r), dtype=np.int64)}
        # test indices are offset so indices stay unique across the two official splits
        index = r + (len(y_tr) if s == "test" else 0)
        splits[s] = Split(_tv_images(src, r, image_size), spec.render(attrs) if len(r) else [], attrs, index.astype(np.int64), y[r], spec)
    return Dataset(name=name, splits=splits, spec=spec, seed=seed, info={"root": str(root), "image_size": image_size})


# --------------------------------------------------------------------------------------------
# one entry point, saving and reading


def load_dataset(name: str, seed: int = 0, sizes: dict | None = None, root: str | Path | None = None, **kwargs) -> Dataset:
    """Any supported data set by name.

    ``digits`` and ``shapes`` are built in memory (no download); if ``root`` holds a folder
    ``root/name`` written by :func:`save_dataset`, that copy is read instead (the DVC-tracked
    ``data/`` folder). Other names go to :func:`torchvision_dataset` with ``root``.
    """
    name = name.lower()
    if name in EMBEDDED:
        if root is not None and (Path(root) / name / "meta.json").exists():
            return read_dataset(Path(root) / name)
        return digits(seed, sizes) if name == "digits" else shapes(seed, sizes, **kwargs)
    if name in TORCHVISION:
        return torchvision_dataset(name, root, seed, sizes, **kwargs)
    raise ValueError(f"unknown data set {name!r}; choose from {EMBEDDED + TORCHVISION}")


def save_dataset(ds: Dataset, folder: str | Path) -> Path:
    """Write ``ds`` to ``folder`` as .npy / .csv / .json files (no pickle); returns the folder."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": ds.name, "seed": ds.seed, "spec": ds.spec.to_json(), "info": ds.info, "splits": {}}
    for s, sp in ds.splits.items():
        np.save(folder / f"{s}_images.npy", sp.images)
        np.save(folder / f"{s}_index.npy", sp.index)
        table = pd.DataFrame({k: v for k, v in sp.attributes.items()})
        for a, vals in ds.spec.values.items():  # human-readable value next to each code
            table[f"{a}_name"] = np.asarray(vals, dtype=object)[sp.attributes[a]] if len(sp) else []
        table.insert(0, "index", sp.index)
        table.to_csv(folder / f"{s}_attributes.csv", index=False)
        (folder / f"{s}_captions.json").write_text(json.dumps(sp.captions, indent=0))
        meta["splits"][s] = len(sp)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_dataset(folder: str | Path) -> Dataset:
    """Read a data set written by :func:`save_dataset`."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise DatasetUnavailableError(f"no saved data set in {str(folder)!r} (meta.json missing); write one with `python -m ecif.data.datasets write <folder>` or `dvc pull`")
    meta = json.loads((folder / "meta.json").read_text())
    spec = CaptionSpec.from_json(meta["spec"])
    splits = {}
    for s in meta["splits"]:
        table = pd.read_csv(folder / f"{s}_attributes.csv")
        attrs = {k: table[k].to_numpy(np.int64) for k in list(spec.values) + [TEMPLATE] if k in table}
        labels = None if spec.label_attribute is None else attrs[spec.label_attribute]
        splits[s] = Split(
            images=np.load(folder / f"{s}_images.npy", allow_pickle=False),
            captions=json.loads((folder / f"{s}_captions.json").read_text()),
            attributes=attrs,
            index=np.load(folder / f"{s}_index.npy", allow_pickle=False),
            labels=labels,
            spec=spec,
        )
    return Dataset(name=meta["name"], splits=splits, spec=spec, seed=int(meta["seed"]), info=meta.get("info", {}))


def write_embedded(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write the embedded data sets (digits, shapes) with default splits to ``folder/<name>``."""
    return [save_dataset(digits(seed), Path(folder) / "digits"), save_dataset(shapes(seed), Path(folder) / "shapes")]


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.data.datasets write data/``: write the embedded raw data for DVC."""
    p = argparse.ArgumentParser(prog="python -m ecif.data.datasets", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the embedded data sets (digits, shapes) to a folder")
    w.add_argument("folder")
    w.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for f in write_embedded(args.folder, args.seed):
        print(f"wrote {f}")


if __name__ == "__main__":
    main()
