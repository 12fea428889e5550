"""The paper's data sets and caption folders, read from folders in their real on-disk format
(written here with generated images): images, captions, labels, splits; and the errors of
missing files, folders and columns, each raised fast and naming what is missing."""

import csv

import numpy as np
import pytest
from fake_data import (dominant_class, write_caption_folder, write_cifar10, write_cifar100, write_dtd,
                       write_fgvc_aircraft, write_flowers102, write_food101)

from ecif.data.datasets import check_available, is_labelled, load_dataset
from ecif.data.pairs import SPLITS, DatasetUnavailableError

SIZES = {"pretrain": 6, "train": 6, "val": 3, "test": 6}


def _check_pairs(ds, n_classes, template):
    idx = np.concatenate([ds[s].index for s in SPLITS])
    assert len(np.unique(idx)) == len(idx)  # disjoint
    for s in SPLITS:
        sp = ds[s]
        assert len(sp) == SIZES[s]
        assert sp.images.dtype == np.uint8 and sp.images.shape[1:] == (16, 16, 3)
        assert sp.captions == [template.format(label=ds.class_names[y]) for y in sp.labels]
        # every image arrived with its own label: the generated colour names the class
        assert [dominant_class(img) for img in sp.images] == [int(y) for y in sp.labels]
        assert sp.labels.max() < n_classes
    assert ds.class_prompts == [template.format(label=c) for c in ds.class_names]


def test_cifar10_pickled_batches(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar10")
    ds = load_dataset("cifar10", root=tmp_path / "data", sizes=SIZES, image_size=16)
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"]
    _check_pairs(ds, 10, "a photo of a {label}.")
    again = load_dataset("cifar10", root=tmp_path / "data", sizes=SIZES, image_size=16)
    assert all(np.array_equal(again[s].index, ds[s].index) for s in SPLITS)  # deterministic subsample
    other = load_dataset("cifar10", root=tmp_path / "data", sizes=SIZES, image_size=16, seed=1)
    assert not all(np.array_equal(other[s].index, ds[s].index) for s in SPLITS)
    # the folder itself may be data_root, too
    assert load_dataset("cifar10", root=tmp_path / "data" / "cifar10", sizes=SIZES, image_size=16)["test"].captions == ds["test"].captions


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path / "cifar100")
    ds = load_dataset("cifar100", root=tmp_path, sizes=SIZES, image_size=16)
    assert ds.class_names == ["apple", "aquarium fish", "baby", "bear", "beaver"]
    _check_pairs(ds, 5, "a photo of a {label}.")


@pytest.mark.parametrize("name, write, names, template", [
    ("food101", write_food101, ["apple pie", "baby back ribs", "waffles"], "a photo of {label}, a type of food."),
    ("flowers102", write_flowers102, ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
     "a photo of a {label}, a type of flower."),
    ("fgvc_aircraft", write_fgvc_aircraft, ["707-320", "A320", "Cessna 172"], "a photo of a {label}, a type of aircraft."),
    ("dtd", write_dtd, ["banded", "cracked", "zigzagged"], "a photo of a {label} texture."),
])
def test_class_names_and_captions_of_each_layout(tmp_path, name, write, names, template):
    write(tmp_path / name)
    ds = load_dataset(name, root=tmp_path, sizes=SIZES, image_size=16)
    assert ds.class_names[:len(names)] == names
    _check_pairs(ds, 3, template)
    if name == "flowers102":
        assert ds["test"].index.min() >= 20  # test comes from tstid (10 images), train from trnid + valid (20)


def test_split_sizes_larger_than_the_set_are_refused(tmp_path):
    write_dtd(tmp_path / "dtd")
    with pytest.raises(ValueError, match="exceed 'dtd'"):
        load_dataset("dtd", root=tmp_path, sizes={"pretrain": 20, "train": 6, "val": 3, "test": 6})


@pytest.mark.parametrize("name, sub", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                       ("food101", "food-101"), ("flowers102", "flowers-102"),
                                       ("fgvc_aircraft", "fgvc-aircraft-2013b"), ("dtd", "dtd/dtd")])
def test_missing_torchvision_files_fail_fast(tmp_path, name, sub, no_network):
    with pytest.raises(DatasetUnavailableError) as err:
        check_available(name, tmp_path / "data")
    msg = str(err.value)
    assert name in msg and sub in msg and str(tmp_path / "data" / name) in msg and "download=True" in msg
    with pytest.raises(DatasetUnavailableError):
        load_dataset(name, root=tmp_path / "data")


def test_a_partly_copied_set_names_the_missing_file(tmp_path):
    write_cifar10(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetUnavailableError, match="cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", root=tmp_path)


def test_caption_folder_with_labels(tmp_path):
    write_caption_folder(tmp_path / "data" / "pairs", n=40, labels=True)
    ds = load_dataset("captions:pairs", root=tmp_path / "data", sizes={"pretrain": 16, "train": 12, "val": 6, "test": 6},
                      image_size=16)
    assert is_labelled("captions:pairs", tmp_path / "data")
    assert ds.class_names == ["colour 0", "colour 1", "colour 2", "colour 3"]
    assert ds.class_prompts[1] == "a photo of a colour 1."
    with open(tmp_path / "data" / "pairs" / "captions.csv") as fh:
        rows = list(csv.DictReader(fh))
    for s in SPLITS:
        sp = ds[s]
        assert sp.images.shape[1:] == (16, 16, 3)
        assert sp.captions == [rows[i]["caption"] for i in sp.index]
        assert [ds.class_names[y] for y in sp.labels] == [rows[i]["label"] for i in sp.index]
        assert [dominant_class(img) for img in sp.images] == [int(rows[i]["label"][-1]) for i in sp.index]
        assert sp.captions == ds.spec.render(sp.attributes)  # shuffling re-renders the same text


def test_caption_folder_without_labels_can_be_shuffled(tmp_path):
    from ecif.data.noise import inject, n_corrupted

    write_caption_folder(tmp_path / "pairs", n=30, labels=False)
    ds = load_dataset(f"captions:{tmp_path / 'pairs'}", root=None, image_size=8)  # an absolute folder
    assert not is_labelled(f"captions:{tmp_path / 'pairs'}", None)
    assert ds.class_names is None and ds.class_prompts is None and ds["train"].labels is None
    assert sum(len(ds[s]) for s in SPLITS) == 30
    c = inject(ds["train"], "shuffle", 0.5, 0)
    assert c.mask.sum() == n_corrupted(0.5, len(ds["train"])) > 0
    with pytest.raises(ValueError, match="label"):
        inject(ds["train"], "label_flip", 0.2, 0)


def test_labelled_caption_folder_refuses_label_flip(tmp_path):
    from ecif.data.noise import inject

    write_caption_folder(tmp_path / "pairs", n=30, labels=True)
    ds = load_dataset("captions:pairs", root=tmp_path)
    with pytest.raises(ValueError, match="do not name their label.*shuffle"):
        inject(ds["train"], "label_flip", 0.2, 0)


def _rewrite(table, header, rows):
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_caption_folder_errors(tmp_path):
    folder = write_caption_folder(tmp_path / "pairs", n=12, labels=True)
    table = folder / "captions.csv"
    with open(table) as fh:
        rows = list(csv.reader(fh))[1:]
    with pytest.raises(DatasetUnavailableError, match="caption folder 'nowhere' not found"):
        check_available("captions:nowhere", tmp_path)
    (folder / "img" / "0003.png").unlink()
    (folder / "img" / "0007.png").unlink()
    with pytest.raises(DatasetUnavailableError, match=r"2 image file\(s\).*img/0003.png, img/0007.png"):
        check_available("captions:pairs", tmp_path)
    _rewrite(table, ["file", "text", "label"], rows)
    with pytest.raises(DatasetUnavailableError, match="lacks the column\\(s\\) caption"):
        load_dataset("captions:pairs", root=tmp_path)
    table.unlink()
    with pytest.raises(DatasetUnavailableError, match="has no captions.csv"):
        check_available("captions:pairs", tmp_path)
    with pytest.raises(ValueError, match="give the folder"):
        check_available("captions:", tmp_path)
