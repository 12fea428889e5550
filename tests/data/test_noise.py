"""Misalignment injection: exact counts, masks that match the change, systematic swaps, errors."""

import numpy as np
import pytest

from ecif.data.embedded import digits, shapes
from ecif.data.noise import inject, load_corruption, n_corrupted


@pytest.fixture(scope="module")
def dig():
    return digits()


@pytest.fixture(scope="module")
def shp():
    return shapes(0, sizes={"pretrain": 0, "train": 400, "val": 0, "test": 0})


def _changed(split, c):
    return np.array([a != b for a, b in zip(split.captions, c.captions)])


@pytest.mark.parametrize("kind", ["shuffle", "label_flip"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.2, 0.5, 0.9])
def test_exact_count_and_mask_digits(dig, kind, rate):
    sp = dig["train"]
    c = inject(sp, kind, rate, seed=3)
    assert c.mask.dtype == bool and c.mask.sum() == n_corrupted(rate, len(sp)) == int(np.floor(rate * len(sp) + 0.5))
    np.testing.assert_array_equal(c.mask, _changed(sp, c))
    np.testing.assert_array_equal(c.caption_labels[~c.mask], sp.labels[~c.mask])
    if kind == "label_flip":
        assert (c.caption_labels[c.mask] != sp.labels[c.mask]).all()
    if kind == "shuffle" and rate > 0:  # a permutation of the chosen captions
        assert sorted(np.array(sp.captions)[c.mask]) == sorted(np.array(c.captions)[c.mask])
    again = inject(sp, kind, rate, seed=3)
    assert again.captions == c.captions


@pytest.mark.parametrize("kind,kw", [("shuffle", {}), ("attribute_swap", {}), ("attribute_swap", {"attribute": "position"}), ("label_flip", {})])
def test_exact_count_and_mask_shapes(shp, kind, kw):
    sp = shp["train"]
    c = inject(sp, kind, 0.25, seed=0, **kw)
    assert c.mask.sum() == 100
    np.testing.assert_array_equal(c.mask, _changed(sp, c))
    if kind == "attribute_swap":  # exactly one attribute changed per corrupted pair
        diff = sum((c.attributes[a] != sp.attributes[a]).astype(int) for a in shp.spec.values)
        np.testing.assert_array_equal(diff, c.mask.astype(int))
        if "attribute" in kw:
            assert (c.attributes["position"] != sp.attributes["position"]).sum() == 100


def test_shuffle_small_sets_and_identical_captions(dig):
    sp = dig["train"].subset(np.arange(40))
    for rate in (0.05, 0.1, 0.5):
        c = inject(sp, "shuffle", rate, seed=1)
        np.testing.assert_array_equal(c.mask, _changed(sp, c))
    one = sp.subset(np.flatnonzero(sp.labels == sp.labels[0]))
    same = one.subset(np.flatnonzero(np.array(one.captions) == one.captions[0]))
    with pytest.raises(ValueError, match="derange"):
        inject(same, "shuffle", 0.5, seed=0)  # every caption identical: no derangement


def test_systematic_swap_is_consistent(shp, tmp_path):
    sp = shp["train"]
    c = inject(sp, "attribute_swap", 0.1, seed=0, systematic=True, attribute="color", source="red", target="blue",
               out_dir=tmp_path)
    red, blue = shp.spec.values["color"].index("red"), shp.spec.values["color"].index("blue")
    assert c.mask.sum() == 40
    assert (sp.attributes["color"][c.mask] == red).all() and (c.attributes["color"][c.mask] == blue).all()
    for a in ("size", "shape", "position"):
        np.testing.assert_array_equal(c.attributes[a], sp.attributes[a])
    for old, new in zip(np.array(sp.captions)[c.mask], np.array(c.captions)[c.mask]):
        assert new == old.replace(" red ", " blue ")
    back = load_corruption(tmp_path)
    np.testing.assert_array_equal(back.mask, c.mask)
    assert back.captions == c.captions and back.details["swap"] == ("color", "red", "blue")
    with pytest.raises(ValueError, match="only"):
        inject(sp, "attribute_swap", 0.5, seed=0, systematic=True, source="red", target="blue")


def test_systematic_rule_grows_past_one_source_value(shp, tmp_path):
    """At rates beyond the most frequent value's share, an unset source grows into a rule of
    several fixed swaps; each corrupted pair follows its source's rule, targets lie outside the
    sources, and a single source suffices whenever it can."""
    sp = shp["train"]
    vals = shp.spec.values["color"]
    counts = np.bincount(sp.attributes["color"], minlength=len(vals))
    m = round(0.3 * len(sp))
    assert counts.max() < m  # the premise: one colour cannot hold 30 % of the pairs
    c = inject(sp, "attribute_swap", 0.3, seed=0, systematic=True, out_dir=tmp_path)
    rules = c.details["swaps"]
    assert c.mask.sum() == m and len(rules) >= 2 and c.details["swap"] == rules[0]
    sources = {src for _, src, _ in rules}
    assert not sources & {tgt for _, _, tgt in rules}
    assert rules[0][1] == vals[int(np.argmax(counts))]
    mapping = {vals.index(src): vals.index(tgt) for _, src, tgt in rules}
    before, after = sp.attributes["color"][c.mask], c.attributes["color"][c.mask]
    np.testing.assert_array_equal(after, [mapping[int(b)] for b in before])
    np.testing.assert_array_equal(c.attributes["color"][~c.mask], sp.attributes["color"][~c.mask])
    assert load_corruption(tmp_path).details["swaps"] == rules
    one = inject(sp, "attribute_swap", 0.1, seed=0, systematic=True)
    assert len(one.details["swaps"]) == 1
    with pytest.raises(ValueError, match="cannot corrupt"):
        inject(sp, "attribute_swap", 0.95, seed=0, systematic=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_bad_rate(dig, rate):
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        inject(dig["train"], "shuffle", rate)


def test_bad_kinds(dig, shp):
    with pytest.raises(ValueError, match="unknown misalignment kind"):
        inject(dig["train"], "swap", 0.1)
    with pytest.raises(ValueError, match="compositional"):
        inject(dig["train"], "attribute_swap", 0.1)
    with pytest.raises(ValueError, match="only apply"):
        inject(dig["train"], "shuffle", 0.1, systematic=True)
    with pytest.raises(ValueError, match="not a value"):
        inject(shp["train"], "attribute_swap", 0.1, systematic=True, source="pink", target="red")


def test_apply_and_cli(dig, tmp_path):
    from ecif.data.noise import main

    sp = dig["train"]
    c = inject(sp, "label_flip", 0.1, seed=0)
    noisy = c.apply(sp)
    assert noisy.captions == c.captions and noisy.images is sp.images
    np.testing.assert_array_equal(noisy.labels, sp.labels)  # labels stay the images' true labels
    main(["inject", "--dataset", "digits", "--kind", "shuffle", "--rate", "0.2", "--out", str(tmp_path)])
    back = load_corruption(tmp_path)
    np.testing.assert_array_equal(back.mask, inject(sp, "shuffle", 0.2, seed=0).mask)
    assert (tmp_path / "noise_mask.npy").exists() and back.mask.sum() == n_corrupted(0.2, len(sp))


def test_attribute_swap_does_not_depend_on_hash_seed():
    """Regression: the per-attribute draws once followed set() order, which changes with
    PYTHONHASHSEED, so two runs from scratch corrupted different pairs."""
    import os
    import subprocess
    import sys

    code = (
        "from ecif.data.embedded import shapes; from ecif.data.noise import inject;"
        "c = inject(shapes(seed=0)['train'], 'attribute_swap', 0.2, seed=1);"
        "print('|'.join(c.captions))"
    )
    outs = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
