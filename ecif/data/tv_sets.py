"""The paper's label data sets, read from a local folder in torchvision's on-disk format.

``root`` is the folder one would pass to the torchvision class (``torchvision.datasets.CIFAR10(root)``);
nothing is ever downloaded. The files are read directly (not through the torchvision classes,
which insist on the official checksums), in exactly the layout torchvision writes:

========================  ======================================================================
``cifar10``               ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (pickled)
``cifar100``              ``cifar-100-python/{train, test, meta}`` (pickled, fine labels)
``food101``               ``food-101/meta/{train,test}.json``, ``food-101/images/<class>/<id>.jpg``
``flowers102``            ``flowers-102/{imagelabels.mat, setid.mat, jpg/image_00001.jpg ...}``
``fgvc_aircraft``         ``fgvc-aircraft-2013b/data/{variants.txt, images_variant_{trainval,test}.txt, images/<id>.jpg}``
``dtd``                   ``dtd/dtd/labels/{train,val,test}1.txt``, ``dtd/dtd/images/<class>/<file>``
========================  ======================================================================

``pretrain``, ``train`` and ``val`` are disjoint seeded subsets of the official training split
(Flowers102 and DTD: train + val; FGVC-Aircraft: trainval), ``test`` a seeded subset of the
official test split. Only the chosen images are decoded. Captions are the CLIP class templates
the paper uses ("a photo of a {label}." ...), one per data set; labels are the class indices.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from ecif.data.pairs import SPLITS, TEMPLATE, CaptionSpec, Dataset, DatasetUnavailableError, Split, split_sizes

TORCHVISION = ("cifar10", "cifar100", "food101", "flowers102", "fgvc_aircraft", "dtd")

#: name -> (torchvision class, caption template = zero-shot prompt)
TEMPLATES = {
    "cifar10": ("CIFAR10", "a photo of a {label}."),
    "cifar100": ("CIFAR100", "a photo of a {label}."),
    "food101": ("Food101", "a photo of {label}, a type of food."),
    "flowers102": ("Flowers102", "a photo of a {label}, a type of flower."),
    "fgvc_aircraft": ("FGVCAircraft", "a photo of a {label}, a type of aircraft."),
    "dtd": ("DTD", "a photo of a {label} texture."),
}
TV_DEFAULT_SIZES = {"pretrain": 5000, "train": 1000, "val": 500, "test": 1000}
DEFAULT_IMAGE_SIZE = 32

#: name -> files (relative to root) that must exist; the first is the set's own folder
REQUIRED = {
    "cifar10": ["cifar-10-batches-py", *[f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"],
    "cifar100": ["cifar-100-python", "cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
    "food101": ["food-101", "food-101/meta/train.json", "food-101/meta/test.json", "food-101/images"],
    "flowers102": ["flowers-102", "flowers-102/imagelabels.mat", "flowers-102/setid.mat", "flowers-102/jpg"],
    "fgvc_aircraft": ["fgvc-aircraft-2013b", "fgvc-aircraft-2013b/data/variants.txt",
                      "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                      "fgvc-aircraft-2013b/data/images_variant_test.txt", "fgvc-aircraft-2013b/data/images"],
    "dtd": ["dtd/dtd", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt", "dtd/dtd/labels/test1.txt",
            "dtd/dtd/images"],
}


def how_to_get(name: str, root: str | Path) -> str:
    """The sentence that says how to provide the files of ``name`` under ``root``."""
    cls = TEMPLATES[name][0]
    extra = ", split='test'" if name in ("food101", "flowers102", "fgvc_aircraft", "dtd") else ""
    return (f"Download it on a machine with internet: python -c \"import torchvision; "
            f"torchvision.datasets.{cls}('{root}', download=True{extra})\" (also with split='train' where the "
            f"class takes one), then copy the folder '{root}' here (README: \"The paper's data sets\").")


def missing_files(name: str, root: str | Path) -> list[str]:
    """The required files of ``name`` that are not under ``root`` (empty: present). Fast: no reading."""
    root = Path(root)
    return [rel for rel in REQUIRED[name] if not (root / rel).exists()]


def check_present(name: str, root: str | Path) -> None:
    """Raise :class:`DatasetUnavailableError` naming what is missing, where, and how to get it."""
    missing = missing_files(name, root)
    if missing:
        shown = ", ".join(missing[:4]) + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
        raise DatasetUnavailableError(
            f"data set {name!r} is not in {str(root)!r}: missing {shown} (torchvision's on-disk layout; "
            f"nothing is downloaded). {how_to_get(name, root)}")


# ----------------------------------------------------------------------- readers of the layouts


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:  # the CIFAR archives are pickles (torchvision reads them the same way)
        return pickle.load(fh, encoding="latin1")


def _cifar(root: Path, name: str):
    """(train images, train labels, test images, test labels, classes); images uint8 (n, 32, 32, 3)."""
    if name == "cifar10":
        folder, train_files, test_files = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_file, meta_key, label_key = "batches.meta", "label_names", "labels"
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        meta_file, meta_key, label_key = "meta", "fine_label_names", "fine_labels"

    def read(files):
        entries = [_unpickle(folder / f) for f in files]
        data = np.vstack([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)
        return data.transpose(0, 2, 3, 1), np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    classes = list(_unpickle(folder / meta_file)[meta_key])
    return x_tr, y_tr, x_te, y_te, classes


def _file_lists(root: Path, name: str):
    """(train files, train labels, test files, test labels, classes) of the image-file sets."""
    if name == "food101":
        base = root / "food-101"
        meta = {s: json.loads((base / "meta" / f"{s}.json").read_text()) for s in ("train", "test")}
        classes = sorted(meta["train"])
        out = []
        for s in ("train", "test"):
            files, labels = [], []
            for c in classes:
                for rel in meta[s].get(c, []):
                    files.append(base / "images" / f"{rel}.jpg")
                    labels.append(classes.index(c))
            out += [files, np.asarray(labels, dtype=np.int64)]
        return (*out, classes)
    if name == "flowers102":
        from scipy.io import loadmat
        from torchvision.datasets import Flowers102  # only its class-name list (a class attribute)

        base = root / "flowers-102"
        ids = loadmat(base / "setid.mat", squeeze_me=True)
        labels = np.atleast_1d(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]).astype(np.int64) - 1
        out = []
        for keys in (("trnid", "valid"), ("tstid",)):
            img_ids = np.concatenate([np.atleast_1d(ids[k]).astype(np.int64) for k in keys])
            out += [[base / "jpg" / f"image_{i:05d}.jpg" for i in img_ids], labels[img_ids - 1]]
        return (*out, list(Flowers102.classes))
    if name == "fgvc_aircraft":
        base = root / "fgvc-aircraft-2013b" / "data"
        classes = [line.strip() for line in (base / "variants.txt").read_text().splitlines() if line.strip()]
        out = []
        for s in ("trainval", "test"):
            rows = [line.strip().split(" ", 1) for line in (base / f"images_variant_{s}.txt").read_text().splitlines() if line.strip()]
            out += [[base / "images" / f"{r[0]}.jpg" for r in rows], np.asarray([classes.index(r[1]) for r in rows], dtype=np.int64)]
        return (*out, classes)
    if name == "dtd":
        base = root / "dtd" / "dtd"
        read = {s: [line.strip().split("/") for line in (base / "labels" / f"{s}1.txt").read_text().splitlines() if line.strip()]
                for s in ("train", "val", "test")}
        classes = sorted({c for rows in read.values() for c, _ in rows})
        out = []
        for parts in (read["train"] + read["val"], read["test"]):
            out += [[base / "images" / c / f for c, f in parts], np.asarray([classes.index(c) for c, _ in parts], dtype=np.int64)]
        return (*out, classes)
    raise ValueError(name)


def fit_image(img, image_size: int) -> np.ndarray:
    """uint8 (S, S, 3) of a PIL image: RGB, shorter side resized to S (bicubic), centre crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = image_size / min(w, h)
    img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return np.asarray(img.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (n, S, S, 3) from uint8 (n, H, W[, C]) images (no-op when already S x S RGB)."""
    from PIL import Image

    if images.ndim == 4 and images.shape[1:] == (image_size, image_size, 3):
        return images
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for j, a in enumerate(images):
        out[j] = fit_image(Image.fromarray(a), image_size)
    return out


def read_image_files(files: list[Path], image_size: int) -> np.ndarray:
    """uint8 (n, S, S, 3) of image files; a missing file is a :class:`DatasetUnavailableError`."""
    from PIL import Image

    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for j, f in enumerate(files):
        try:
            with Image.open(f) as img:
                out[j] = fit_image(img, image_size)
        except FileNotFoundError as e:
            raise DatasetUnavailableError(f"image file {str(f)!r} is listed but missing") from e
    return out


def _rows(n_train: int, n_test: int, counts: dict[str, int], seed: int, name: str) -> dict[str, np.ndarray]:
    n_tr = counts["pretrain"] + counts["train"] + counts["val"]
    if n_tr > n_train or counts["test"] > n_test:
        raise ValueError(f"split sizes {counts} exceed {name!r}: {n_train} training and {n_test} test images; "
                         "make common.split_sizes smaller")
    perm = np.random.default_rng(seed).permutation(n_train)
    bounds = np.cumsum([0, counts["pretrain"], counts["train"], counts["val"]])
    rows = {s: np.sort(perm[bounds[i]: bounds[i + 1]]) for i, s in enumerate(SPLITS[:3])}
    rows["test"] = np.sort(np.random.default_rng([seed, 1]).permutation(n_test)[: counts["test"]])
    return rows


def torchvision_dataset(name: str, root: str | Path | None, seed: int = 0, sizes: dict | None = None,
                        image_size: int | None = None) -> Dataset:
    """One of the paper's label data sets from ``root`` (torchvision's layout) as image-caption pairs.

    Images are uint8 (n, S, S, 3), S = ``image_size`` (default 32; shorter side resized, centre
    crop). Split sizes default to :data:`TV_DEFAULT_SIZES` (counts; fractions <= 1 of the
    training split are allowed too).

    Raises:
        DatasetUnavailableError: at once (before reading anything) if a file is missing.
        ValueError: unknown name, or split sizes larger than the data set.
    """
    if name not in TEMPLATES:
        raise ValueError(f"unknown torchvision data set {name!r}; choose from {TORCHVISION}")
    if root is None:
        raise DatasetUnavailableError(f"data set {name!r} is not embedded and no root folder was given. "
                                      f"{how_to_get(name, '<root>')}")
    root = Path(root)
    check_present(name, root)
    image_size = int(image_size or DEFAULT_IMAGE_SIZE)
    if name in ("cifar10", "cifar100"):
        x_tr, y_tr, x_te, y_te, classes = _cifar(root, name)
        n_tr, n_te = len(y_tr), len(y_te)
    else:
        f_tr, y_tr, f_te, y_te, classes = _file_lists(root, name)
        n_tr, n_te = len(f_tr), len(f_te)
    counts = split_sizes(n_tr + n_te, sizes or TV_DEFAULT_SIZES, TV_DEFAULT_SIZES)  # fractions: of all images
    rows = _rows(n_tr, n_te, counts, seed, name)
    names = [str(c).replace("_", " ") for c in classes]
    template = TEMPLATES[name][1]
    spec = CaptionSpec(templates=(template,), values={"label": names}, label_attribute="label", prompt_template=template)
    splits = {}
    for s, r in rows.items():
        test = s == "test"
        y = (y_te if test else y_tr)[r]
        if name in ("cifar10", "cifar100"):
            images = resize_images((x_te if test else x_tr)[r], image_size)
        else:
            images = read_image_files([(f_te if test else f_tr)[int(i)] for i in r], image_size)
        attrs = {"label": y, TEMPLATE: np.zeros(len(r), dtype=np.int64)}
        index = r + (n_tr if test else 0)  # unique across the two official splits
        splits[s] = Split(images, spec.render(attrs) if len(r) else [], attrs, index.astype(np.int64), y.copy(), spec)
    return Dataset(name=name, splits=splits, spec=spec, seed=seed,
                   info={"root": str(root), "image_size": image_size, "source": f"torchvision layout ({TEMPLATES[name][0]})"})
