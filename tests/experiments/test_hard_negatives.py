"""Mining hard negatives from degraded images, and the study of hard-negative batching."""

from functools import lru_cache

import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol, within_batch_mean
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.heads import LinearHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.data.shifts import gaussian_blur
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments.hard_negatives import (STUDY_COLUMNS, degrade_images, hard_negative_study, hard_negatives,
                                             mine_hard_negatives)
from ecif.experiments.retraining import sample_loo_pairs
from tests.tiny_problem import tiny_problem

# ------------------------------------------------------------------ degradation


def _images(n=5, h=12, w=10, c=3, seed=0):
    return np.random.default_rng(seed).integers(1, 256, size=(n, h, w, c)).astype(np.uint8)


def test_blur_is_the_shift_modules_blur():
    img = _images()
    np.testing.assert_array_equal(degrade_images(img, "blur", 1.5), gaussian_blur(img, 1.5))


def test_mask_blanks_whole_patches_at_the_given_rate():
    img = _images(n=400, h=12, w=10)  # patches of 4: a 3 x 3 grid, the last column 2 px wide
    out = degrade_images(img, "mask", 0.3, patch=4, seed=1)
    assert out.shape == img.shape and out.dtype == np.uint8
    blank = (out == 0).all(axis=3)  # the images have no zero pixel: zero = blanked
    grid = blank[:, ::4, ::4]  # one pixel per patch
    # every pixel of a patch shares its fate, and untouched pixels are unchanged
    np.testing.assert_array_equal(np.repeat(np.repeat(grid, 4, 1), 4, 2)[:, :12, :10], blank)
    np.testing.assert_array_equal(out[~blank], img[~blank])
    assert abs(grid.mean() - 0.3) < 0.03  # 3600 patches: the binomial sd of the rate is 0.008
    np.testing.assert_array_equal(out, degrade_images(img, "mask", 0.3, patch=4, seed=1))
    assert not np.array_equal(out, degrade_images(img, "mask", 0.3, patch=4, seed=2))
    assert (degrade_images(img, "mask", 1.0) == 0).all()
    np.testing.assert_array_equal(degrade_images(img[..., 0], "mask", 0.0), img[..., 0])  # grey images too


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 4, 4), np.float32), "blur", 1.0), "uint8"),
    ((np.zeros((2, 4, 4), np.uint8), "noise", 1.0), "unknown degradation"),
    ((np.zeros((2, 4, 4), np.uint8), "blur", 0.0), "sigma"),
    ((np.zeros((2, 4, 4), np.uint8), "mask", 1.5), r"\[0, 1\]"),
])
def test_degrade_errors(args, match):
    with pytest.raises(ValueError, match=match):
        degrade_images(*args)


# ------------------------------------------------------------------ mining


def _reference_neighbours(u, v, m, exclude_same):
    """Loop reference: per pair, the m other captions of largest cosine similarity."""
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    out = []
    for k in range(len(u)):
        cand = [j for j in range(len(v)) if j != k and not (exclude_same and np.allclose(v[j], v[k]))]
        out.append(sorted(cand, key=lambda j: -u[k] @ v[j])[:m])
    return np.array(out)


def test_hard_negatives_match_a_loop_reference():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    hn = hard_negatives(u * 3.0, v, 4)  # scale-free
    np.testing.assert_array_equal(hn.neighbours, _reference_neighbours(u, v, 4, False))
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(hn.similarity, un @ vn.T, atol=1e-14)


def test_identical_captions_are_not_hard_negatives_and_ties_follow_the_seed():
    rng = np.random.default_rng(1)
    texts = rng.normal(size=(4, 6))
    caption = np.repeat(np.arange(4), 10)  # 40 pairs, 4 distinct captions
    v = texts[caption]
    u = v + 0.5 * rng.normal(size=v.shape)
    hn = hard_negatives(u, v, 9)
    assert (caption[hn.neighbours] != caption[:, None]).all()
    np.testing.assert_array_equal(hn.neighbours, hard_negatives(u, v, 9).neighbours)
    other = hard_negatives(u, v, 9, seed=1).neighbours
    assert not np.array_equal(hn.neighbours, other)  # ties among the 10 copies of a caption: another draw
    np.testing.assert_array_equal(caption[hn.neighbours], caption[other])  # ... of the same captions
    with pytest.raises(ValueError, match="only 30 candidate captions"):
        hard_negatives(u, v, 31)
    assert hard_negatives(u, v, 31, exclude_same_caption=False).neighbours.shape == (40, 31)
    with pytest.raises(ValueError, match="m \\(hard negatives per pair\\)"):
        hard_negatives(u, v, 40)
    with pytest.raises(ValueError, match="same shape"):
        hard_negatives(u[:5], v, 2)


def test_mining_uses_the_model_at_the_given_parameters():
    d = synthetic_pairs(40, n_val=10, d_img=6, d_txt=5, width=4, seed=2)
    param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0)
    theta = param.theta0 + 0.1 * torch.randn(param.n_params, dtype=torch.float64, device="cpu",
                                             generator=torch.Generator(device="cpu").manual_seed(0))
    x_deg = d.x + np.random.default_rng(0).normal(size=d.x.shape)
    hn = mine_hard_negatives(param, theta, x_deg, d.y, 3)
    u = x_deg @ param.image_projection(theta).numpy().T
    v = d.y @ param.text_projection(theta).numpy().T
    np.testing.assert_array_equal(hn.neighbours, hard_negatives(u, v, 3).neighbours)
    assert not np.array_equal(hn.neighbours, mine_hard_negatives(param, param.theta0, x_deg, d.y, 3).neighbours)


# ------------------------------------------------------------------ the study


@lru_cache(maxsize=1)
def _study():
    tiny = tiny_problem()  # 200 synthetic pairs, 15% misaligned, batches of 50, lam 0.2
    d, param, val = tiny.data, tiny.param, tiny.val_obj
    x_deg = d.x + 2.0 * np.random.default_rng(0).normal(size=d.x.shape)  # the image content mostly gone
    hn = mine_hard_negatives(param, param.theta0, x_deg, d.y, 5)
    batchings = {"random": tiny.obj.batching, "hard_negative": hn.batching(50, 0)}
    pairs = sample_loo_pairs(d.misaligned, 8, 2, seed=0)
    summary, loo = hard_negative_study(param, d.x, d.y, val, batchings, lam=0.2, loo_pairs=pairs, mask=d.misaligned,
                                       similarity=hn.similarity, gtol=1e-10)
    return d, param, val, hn, batchings, pairs, summary, loo


def test_study_table_shape_and_agreement_with_retraining():
    d, _, _, hn, batchings, pairs, summary, loo = _study()
    assert list(summary.columns) == list(STUDY_COLUMNS)
    assert summary["batching"].tolist() == ["random", "hard_negative"]
    assert len(loo) == 2 * len(pairs) and set(loo["batching"]) == {"random", "hard_negative"}
    assert loo["misaligned"].sum() == 2 * 2
    assert summary["refits_converged"].all() and (summary["n_loo"] == 8).all()
    # mined batches are more alike than random ones under the mined similarity
    s = summary.set_index("batching")
    assert s.loc["hard_negative", "within_batch_similarity"] > s.loc["random", "within_batch_similarity"] + 0.1  # 0.255, 0.129
    # and each pair meets its own hard negatives far more often (random: about 49/199 of them)
    met = {name: (bp.batch_ids[hn.neighbours] == bp.batch_ids[:, None]).mean() for name, bp in batchings.items()}
    assert met["hard_negative"] > 0.5 > 0.3 > met["random"], met  # measured: 0.571 and 0.239
    # ECIF follows the retraining under either batching
    assert (summary["pearson_ecif"] > 0.9).all(), summary


def test_study_numbers_equal_an_independent_computation():
    d, param, val, hn, batchings, pairs, summary, loo = _study()
    for name, bp in batchings.items():
        obj = ContrastiveObjective(param, d.x, d.y, bp, lam=0.2)
        theta = fit(obj, gtol=1e-10).theta
        s = ECIF(obj, theta, solver="dense").influence_scores(validation_gradient(val, theta),
                                                              ("positive", "negative"))
        ratio = float(s["negative"].norm() / s["positive"].norm())
        row = summary.set_index("batching").loc[name]
        assert row["neg_to_pos"] == pytest.approx(ratio, rel=1e-6)
        assert row["within_batch_similarity"] == pytest.approx(within_batch_mean(hn.similarity, bp), rel=1e-12)
        lo = float(torch.linalg.eigvalsh(obj.hessian(theta))[0])
        assert row["min_eigenvalue"] == pytest.approx(lo, rel=1e-6)
        part = loo[loo["batching"] == name]
        assert np.corrcoef(part["ecif"], part["actual"])[0, 1] == pytest.approx(row["pearson_ecif"], rel=1e-9)
        np.testing.assert_allclose(part["positive"], s["positive"].numpy()[pairs], rtol=1e-6, atol=1e-12)


def test_study_errors():
    d, param, val, hn, batchings, pairs, _, _ = _study()
    with pytest.raises(ValueError, match="batchings is empty"):
        hard_negative_study(param, d.x, d.y, val, {}, lam=0.2, loo_pairs=pairs)
    with pytest.raises(ValueError, match="over the 200 pairs"):
        hard_negative_study(param, d.x, d.y, val, {"r": BatchingProtocol.from_seed(50, 10, 0)}, lam=0.2,
                            loo_pairs=pairs)
    with pytest.raises(ValueError, match="at least 3 pair indices"):
        hard_negative_study(param, d.x, d.y, val, batchings, lam=0.2, loo_pairs=[1, 500])
    with pytest.raises(ValueError, match="similarity must be"):
        hard_negative_study(param, d.x, d.y, val, batchings, lam=0.2, loo_pairs=pairs, similarity=np.zeros((3, 3)))
