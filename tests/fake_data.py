"""Small data folders in the real on-disk formats, written by the tests (import as
``from fake_data import ...``): torchvision's layouts of CIFAR-10, Flowers102, FGVC-Aircraft and
DTD, and caption folders. Images are generated: each class has its own colour, so a model can
learn them and a test can check that an image arrived with its label.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_RGB = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 210, 40], [160, 60, 200],
                      [40, 200, 200], [240, 140, 30], [120, 120, 120], [250, 250, 250], [90, 50, 20]], dtype=np.float64)


def class_image(label: int, k: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """uint8 (h, w, 3): the class colour with seeded noise (``k`` varies the noise)."""
    rng = np.random.default_rng([label, k])
    img = CLASS_RGB[label % len(CLASS_RGB)] + rng.normal(0, 12, size=(*size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def dominant_class(img: np.ndarray) -> int:
    """The class whose colour is closest to the image's mean colour."""
    mean = img.reshape(-1, 3).mean(axis=0)
    return int(np.argmin(((CLASS_RGB - mean) ** 2).sum(axis=1)))


def _save_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def write_cifar10(root: Path, n_train: int = 40, n_test: int = 20, n_classes: int = 10) -> Path:
    """``root/cifar-10-batches-py``: five pickled training batches, ``test_batch``, ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"][:n_classes]

    def batch(labels, k0):
        data = np.stack([class_image(lab, k0 + i, (32, 32)).transpose(2, 0, 1).reshape(-1) for i, lab in enumerate(labels)])
        return {"batch_label": "fake", "labels": [int(x) for x in labels], "data": data,
                "filenames": [f"img_{k0 + i}.png" for i in range(len(labels))]}

    labels = np.arange(n_train) % n_classes
    for b, part in enumerate(np.array_split(labels, 5)):
        with open(folder / f"data_batch_{b + 1}", "wb") as fh:
            pickle.dump(batch(part, 1000 * b), fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(np.arange(n_test) % n_classes, 10_000), fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_train // 5, "num_vis": 3072}, fh)
    return root


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 15, n_classes: int = 5) -> Path:
    """``root/cifar-100-python``: pickled ``train``, ``test`` (fine and coarse labels) and ``meta``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"][:n_classes]
    for split, n, k0 in (("train", n_train, 0), ("test", n_test, 10_000)):
        labels = np.arange(n) % n_classes
        data = np.stack([class_image(int(lab), k0 + i, (32, 32)).transpose(2, 0, 1).reshape(-1) for i, lab in enumerate(labels)])
        with open(folder / split, "wb") as fh:
            pickle.dump({"filenames": [f"{i}.png" for i in range(n)], "batch_label": split, "fine_labels": labels.tolist(),
                         "coarse_labels": (labels // 2).tolist(), "data": data}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["a", "b", "c"]}, fh)
    return root


def write_food101(root: Path, per_class: int = 8, n_test_per_class: int = 4) -> Path:
    """``root/food-101``: ``meta/{train,test}.json`` (class -> ["class/id"]) and ``images/<class>/<id>.jpg``."""
    import json

    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "waffles"]
    meta = {"train": {}, "test": {}}
    k = 0
    for lab, c in enumerate(classes):
        for split, n in (("train", per_class), ("test", n_test_per_class)):
            ids = []
            for _ in range(n):
                ids.append(f"{c}/{100000 + k}")
                _save_jpg(base / "images" / c / f"{100000 + k}.jpg", class_image(lab, k))
                k += 1
            meta[split][c] = ids
    (base / "meta").mkdir(parents=True)
    for split in ("train", "test"):
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
    return root


def write_flowers102(root: Path, n_images: int = 30, n_classes: int = 3) -> Path:
    """``root/flowers-102``: ``jpg/image_XXXXX.jpg``, ``imagelabels.mat`` (1-based), ``setid.mat``."""
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = (np.arange(n_images) % n_classes) + 1
    for i, lab in enumerate(labels, start=1):
        _save_jpg(base / "jpg" / f"image_{i:05d}.jpg", class_image(int(lab) - 1, i))
    savemat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    ids = np.arange(1, n_images + 1)
    savemat(base / "setid.mat", {"trnid": ids[0::3].reshape(1, -1), "valid": ids[1::3].reshape(1, -1),
                                 "tstid": ids[2::3].reshape(1, -1)})
    return root


def write_fgvc_aircraft(root: Path, n_trainval: int = 24, n_test: int = 12) -> Path:
    """``root/fgvc-aircraft-2013b/data``: ``variants.txt``, ``images_variant_{trainval,test}.txt``, ``images/``."""
    base = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A320", "Cessna 172"]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    k = 0
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for i in range(n):
            lab = i % len(variants)
            name = f"{1000000 + k:07d}"
            _save_jpg(base / "images" / f"{name}.jpg", class_image(lab, k))
            lines.append(f"{name} {variants[lab]}")
            k += 1
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_dtd(root: Path, per_split: int = 12) -> Path:
    """``root/dtd/dtd``: ``images/<class>/<file>.jpg`` and ``labels/{train,val,test}1.txt``."""
    base = root / "dtd" / "dtd"
    classes = ["banded", "cracked", "zigzagged"]
    (base / "labels").mkdir(parents=True)
    k = 0
    for split in ("train", "val", "test"):
        lines = []
        for i in range(per_split):
            lab = i % len(classes)
            rel = f"{classes[lab]}/{classes[lab]}_{k:04d}.jpg"
            _save_jpg(base / "images" / rel, class_image(lab, k))
            lines.append(rel)
            k += 1
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return root


CAPTION_WORDS = ["a red", "a green", "a blue", "a yellow", "a purple"]


def write_caption_folder(folder: Path, n: int = 40, labels: bool = True, n_classes: int = 4) -> Path:
    """``folder/img/*.png`` and ``folder/captions.csv`` (``file,caption[,label]``); captions vary."""
    objects = ["kite", "ball", "car", "boat", "cup"]
    rows = []
    for i in range(n):
        lab = i % n_classes
        rel = f"img/{i:04d}.png"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(class_image(lab, i, (36, 30))).save(path)
        caption = f"{CAPTION_WORDS[lab % len(CAPTION_WORDS)]} {objects[(i // n_classes) % len(objects)]} on a table"
        rows.append([rel, caption] + ([f"colour {lab}"] if labels else []))
    with open(folder / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "caption"] + (["label"] if labels else []))
        w.writerows(rows)
    return folder
