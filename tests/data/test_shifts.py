"""Test-time shifts (ecif/data/shifts.py): deterministic, severity-ordered, ground truth kept."""

from __future__ import annotations

import numpy as np
import pytest

from ecif.data import shifts as S
from ecif.data.datasets import load_dataset


@pytest.fixture(scope="module")
def split():
    return load_dataset("shapes", sizes={"pretrain": 4, "train": 4, "val": 4, "test": 60})["test"]


@pytest.mark.parametrize("kind", S.KINDS)
def test_every_shift_is_deterministic_and_keeps_the_ground_truth(split, kind: str) -> None:
    a, b = S.apply_shift(split, kind, 2, seed=3), S.apply_shift(split, kind, 2, seed=3)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    for k, v in split.attributes.items():
        assert np.array_equal(a.attributes[k], v)
    assert np.array_equal(a.index, split.index)
    if S.modality(kind) == "visual":
        assert a.captions == split.captions
        assert a.images.shape == split.images.shape and a.images.dtype == np.uint8
        assert not np.array_equal(a.images, split.images)
    else:
        assert np.array_equal(a.images, split.images)
        assert sum(x != y for x, y in zip(a.captions, split.captions)) >= len(split) // 4


@pytest.mark.parametrize("kind", ["noise", "dropout", "typo", "synonym", "token_dropout"])
def test_random_shifts_depend_on_the_seed(split, kind: str) -> None:
    a, b = S.apply_shift(split, kind, 2, seed=0), S.apply_shift(split, kind, 2, seed=1)
    assert not (np.array_equal(a.images, b.images) and a.captions == b.captions)


def test_visual_severity_grows_with_the_level(split) -> None:
    for kind in S.VISUAL:
        dist = [np.abs(S.apply_shift(split, kind, lv).images.astype(float) - split.images).mean() for lv in (1, 2, 3)]
        assert dist[0] < dist[1] < dist[2], (kind, dist)


def test_text_severity_grows_with_the_level(split) -> None:
    for kind in ("typo", "synonym", "token_dropout"):
        changed = [sum(len(set(c.split()) ^ set(o.split())) for c, o in
                       zip(S.apply_shift(split, kind, lv).captions, split.captions)) for lv in (1, 2, 3)]
        assert changed[0] < changed[1] < changed[2], (kind, changed)


def test_blur_preserves_constant_images_and_mean() -> None:
    flat = np.full((2, 9, 9, 3), 77, dtype=np.uint8)
    assert np.array_equal(S.gaussian_blur(flat, 1.5), flat)
    img = np.zeros((1, 15, 15), dtype=np.uint8)
    img[0, 7, 7] = 255
    out = S.gaussian_blur(img, 1.0).astype(float)
    assert out[0, 7, 7] < 255 and out[0, 7, 8] > 0 and abs(out.sum() - 255) < 10


def test_synonyms_and_retemplate_keep_the_content(split) -> None:
    caps = S.synonyms(["a small red circle at the top left"], 1.0)
    assert caps[0].split()[2] in S.SYNONYMS["red"] and caps[0].split()[3] in S.SYNONYMS["circle"]
    re = S.retemplate(split, 3, seed=0)
    vals = split.spec.values
    for i, c in enumerate(re):
        for a in ("size", "color", "shape", "position"):
            assert vals[a][int(split.attributes[a][i])] in c
    assert len({c.split(" ")[0] for c in re}) > 1  # several templates used


def test_token_dropout_keeps_a_word_and_typos_stay_close() -> None:
    assert all(c for c in S.token_dropout(["one two three"] * 50, 1.0))
    t = S.typos(["a small red circle at the top left"] * 20, 0.1, seed=0)
    assert any(c != "a small red circle at the top left" for c in t)
    assert all(abs(len(c) - 34) <= 8 for c in t)


def test_bad_arguments(split) -> None:
    with pytest.raises(ValueError):
        S.apply_shift(split, "fog", 1)
    with pytest.raises(ValueError):
        S.apply_shift(split, "blur", 4)
    digits = load_dataset("digits")["test"]
    with pytest.raises(ValueError):
        S.retemplate(digits)
