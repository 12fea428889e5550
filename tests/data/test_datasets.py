"""Data sets: splits disjoint and deterministic, captions rendered from attributes, disk round trip."""


import numpy as np
import pytest

from ecif.data.datasets import load_dataset
from ecif.data.embedded import digits, shapes
from ecif.data.pairs import SPLITS, DatasetUnavailableError
from ecif.data.storage import read_dataset, save_dataset, write_embedded
from ecif.data.tv_sets import torchvision_dataset


@pytest.mark.parametrize("make", [digits, lambda seed=0: shapes(seed, sizes={"pretrain": 120, "train": 60, "val": 30, "test": 30})])
def test_splits_disjoint_deterministic_and_seeded(make):
    a, b, c = make(seed=0), make(seed=0), make(seed=1)
    idx = [a[s].index for s in SPLITS]
    assert sum(map(len, idx)) == len(np.unique(np.concatenate(idx)))  # disjoint
    for s in SPLITS:
        assert len(a[s]) > 0
        np.testing.assert_array_equal(a[s].index, b[s].index)
        np.testing.assert_array_equal(a[s].images, b[s].images)
        assert a[s].captions == b[s].captions
        assert a[s].images.dtype == np.uint8 and len(a[s].images) == len(a[s].captions) == len(a[s].labels)
    assert any(not np.array_equal(a[s].index, c[s].index) for s in SPLITS) or not np.array_equal(a["train"].images, c["train"].images)


def test_digits_content():
    d = digits()
    assert d["test"].images.shape[1:] == (8, 8)
    assert d.class_prompts[7] == "a handwritten digit seven"
    sp = d["train"]
    assert all(d.spec.values["digit"][lab] in cap for lab, cap in zip(sp.labels, sp.captions))
    assert sum(len(d[s]) for s in SPLITS) == 1797


def test_shapes_attributes_are_ground_truth():
    s = shapes(0, sizes={"pretrain": 0, "train": 200, "val": 0, "test": 0})
    sp = s["train"]
    assert sp.images.shape == (200, 32, 32, 3)
    assert sp.captions == s.spec.render(sp.attributes)
    # the pixel colour of the shape matches the colour attribute: brightest-channel statistics
    red = sp.attributes["color"] == s.spec.values["color"].index("red")
    blue = sp.attributes["color"] == s.spec.values["color"].index("blue")
    frac_red = (sp.images[..., 0] > 150).mean(axis=(1, 2))
    frac_blue = (sp.images[..., 2] > 150).mean(axis=(1, 2))
    assert frac_red[red].min() > 0 and frac_blue[blue].min() > 0
    assert frac_blue[red].max() == 0 and frac_red[blue].max() == 0
    large = sp.attributes["size"] == 1
    assert frac_red[red & large].mean() > 2 * frac_red[red & ~large].mean()


def test_save_read_roundtrip(tmp_path):
    d = digits()
    back = read_dataset(save_dataset(d, tmp_path / "digits"))
    for s in SPLITS:
        np.testing.assert_array_equal(back[s].images, d[s].images)
        np.testing.assert_array_equal(back[s].labels, d[s].labels)
        assert back[s].captions == d[s].captions
    assert not list(tmp_path.rglob("*.pkl"))
    paths = write_embedded(tmp_path / "data")
    assert load_dataset("shapes", root=tmp_path / "data")["test"].captions == shapes()["test"].captions
    assert [p.name for p in paths] == ["digits", "shapes"]


def test_missing_real_dataset_fails_fast(tmp_path, no_network):
    import torchvision.datasets  # noqa: F401  (import time is not the failure's latency)

    with pytest.raises(DatasetUnavailableError, match="cifar10.*download=True"):
        torchvision_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetUnavailableError, match="dtd"):
        load_dataset("dtd", root=None)


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="sum to"):
        digits(sizes={"pretrain": 1500, "train": 500})


def test_embedded_with_sizes_or_image_size_are_built_in_memory(tmp_path):
    write_embedded(tmp_path / "data")
    small = load_dataset("digits", root=tmp_path / "data", sizes={"pretrain": 10, "train": 8, "val": 4, "test": 4},
                         image_size=16)
    assert [len(small[s]) for s in SPLITS] == [10, 8, 4, 4]
    assert small["train"].images.shape == (8, 16, 16, 3) and small["train"].images.dtype == np.uint8
    assert load_dataset("shapes", root=tmp_path / "data", sizes={"pretrain": 2, "train": 4, "val": 2, "test": 2},
                        image_size=24)["test"].images.shape == (2, 24, 24, 3)
    # the defaults read the saved copy
    assert load_dataset("digits", root=tmp_path / "data")["train"].images.shape[1:] == (8, 8)
