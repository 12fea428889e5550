"""The EMI study helpers (ecif/experiments/emi_study.py) on hand-made sets and the tiny problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ecif.data import shifts
from ecif.experiments import emi_study as S
from tests.tiny_problem import tiny_problem


def hand_view(n: int = 60, seed: int = 0) -> S.SetView:
    """Items of 4 classes; each class has its own caption and caption embedding; the images'
    features point at their class (plus noise), so retrieval by an identity model is right."""
    rng = np.random.default_rng(seed)
    cls = np.arange(n) % 4
    proto = np.eye(4)
    x = proto[cls] + 0.05 * rng.standard_normal((n, 4))
    captions = [f"class {c}" for c in cls]
    z_y = S._norm(proto[cls] + 0.1)  # one embedding per caption, as from a real text embedder
    return S.SetView(x_feat=x, bank_feat=proto[cls].copy(), z_v=S._norm(x), z_t=z_y.copy(), z_y=z_y,
                     clean=captions, attributes={"c": cls})


class Identity:
    def image_projection(self, theta):
        return torch.eye(4, dtype=torch.float64)

    def text_projection(self, theta):
        return torch.eye(4, dtype=torch.float64)


def test_right_responses_have_zero_emi_and_full_accuracy() -> None:
    v = hand_view()
    idx = S.respond(Identity(), None, v)
    assert np.array_equal(np.asarray(v.clean)[idx], np.asarray(v.clean))
    ev = S.evaluate(v, idx, {"folds": 2})
    assert ev["accuracy"] == 1.0 and ev["emi"] == pytest.approx(0.0, abs=1e-12)
    assert ev["dmi_model"] == pytest.approx(ev["dmi_reference"]) == pytest.approx(np.log(4))


def test_wrong_responses_lower_emi_and_the_scenario_sees_it() -> None:
    v = hand_view()
    right = S.respond(Identity(), None, v)
    wrong = np.random.default_rng(0).permutation(len(v))  # unrelated captions
    ev = S.evaluate(v, wrong, {"folds": 2})
    assert ev["accuracy"] < 0.5 and ev["emi"] < -1.0
    sc = S.shift_scenario(v, right, v, wrong, {"folds": 2})
    assert sc["emid"] > 1.0 and sc["acc_drop"] > 0.5 and sc["dmi_emid"] > 0.5
    assert sc["jsd_v"] == pytest.approx(0.0, abs=1e-10) and sc["jsd_p_out"] == pytest.approx(0.0, abs=1e-10)
    # permuted responses keep the response marginal: the bound's output term cannot see them
    assert sc["jsd_q_out"] == pytest.approx(0.0, abs=1e-10)
    collapsed = np.zeros(len(v), dtype=int)  # every image answered with the first caption
    sc = S.shift_scenario(v, right, v, collapsed, {"folds": 2})
    assert sc["jsd_q_out"] > 0.1 and sc["bound"] > sc["input_part"] and sc["emid"] > 1.0


def test_shared_estimator_is_used_when_given() -> None:
    from ecif.experiments import emi as E

    v = hand_view()
    q = E.fit_linear_gaussian(v.z_v, v.z_y)
    idx = S.respond(Identity(), None, v)
    a = S.evaluate(v, idx[::-1], q=q)
    assert a["mi_reference"] == pytest.approx(q.club(v.z_v, v.z_y))


def test_scenario_grid_counts_and_names() -> None:
    g = S.scenario_grid(levels=(1, 3), joint=[("blur", "typo")])
    assert len(g) == 2 * len(shifts.KINDS) + 1
    assert S.scenario_name(g[-1]) == "blur2+typo2"
    assert len(S.scenario_grid(levels=(1,), joint="all")) == len(shifts.KINDS) + 12


def test_bootstrap_correlation() -> None:
    a = np.arange(20.0)
    r = S.bootstrap_correlation(a, 2 * a + 1, n_boot=200)
    assert r["pearson"] == pytest.approx(1.0) and r["spearman"] == pytest.approx(1.0)
    assert r["pearson_lo"] == pytest.approx(1.0)
    noise = np.random.default_rng(0).standard_normal(20)
    r = S.bootstrap_correlation(a, noise, n_boot=500)
    assert r["spearman_lo"] < r["spearman"] < r["spearman_hi"] and r["spearman_lo"] < 0 < r["spearman_hi"]
    with pytest.raises(ValueError):
        S.bootstrap_correlation([1, 2], [1, 2])


def test_correlation_table_rows() -> None:
    rng = np.random.default_rng(0)
    grid = pd.DataFrame({"scenario": [f"s{i}" for i in range(6)] * 2, "seed": [0] * 6 + [1] * 6,
                         "emid": rng.random(12), "bound": rng.random(12), "acc_drop": rng.random(12)})
    t = S.correlation_table(grid, n_boot=50)
    assert len(t) == 3 * 3 and set(t["seed"]) == {"mean", "0", "1"}


@pytest.mark.slow  # the shared tiny problem's fit plus three refits: about a minute on 2 busy cores
def test_removal_refits_remove_the_right_sets() -> None:
    tp = tiny_problem()
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    # a small "misaligned" set keeps the three refits cheap (the sets only need k = mask.sum())
    mask = np.zeros(len(harm), dtype=bool)
    mask[np.flatnonzero(np.asarray(tp.data.misaligned))[:4]] = True
    out = S.removal_refits(tp.obj, tp.theta, harm, mask, seed=0, preconditioner=tp.engine.solver)
    assert set(out) == {"ecif", "random", "oracle"}
    k = int(mask.sum())
    assert np.array_equal(out["oracle"][0], np.flatnonzero(mask))
    assert all(len(idx) == k for idx, _ in out.values())
    assert np.array_equal(np.sort(out["ecif"][0]), np.sort(np.argsort(-harm, kind="stable")[:k]))
    g = tp.obj.without(out["oracle"][0]).gradient(out["oracle"][1])
    assert float(g.norm()) < 1e-8
    assert S.removal_refits(tp.obj, tp.theta, harm, np.zeros_like(mask)) == {}


def test_the_random_set_is_not_the_injected_one() -> None:
    # the injection draws its pairs from default_rng([seed, kind]); the random removal set must
    # come from another stream, or for seed 0 it coincides with the oracle set
    from ecif.data.datasets import load_dataset
    from ecif.data.noise import inject

    train = load_dataset("shapes", sizes={"pretrain": 4, "train": 100, "val": 4, "test": 4})["train"]
    for seed in (0, 1):
        mask = inject(train, "shuffle", 0.2, seed).mask
        sets = S.removal_sets(np.arange(100.0), mask, seed=seed)
        assert mask[sets["random"]].mean() < 0.6
        assert np.array_equal(sets["oracle"], np.flatnonzero(mask))
        assert np.array_equal(sets["ecif"], np.arange(80, 100))


def test_respond_applies_the_models_centring() -> None:
    """A model fitted on centred features (docs/math.md §13) answers on features centred the same
    way: with a large common offset added to the raw features, ``respond`` given the offsets as
    ``centring`` retrieves exactly what it retrieves without the offset."""
    v = hand_view()
    right = S.respond(Identity(), None, v)
    off_img, off_txt = np.array([30.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 30.0])
    shifted = S.SetView(x_feat=v.x_feat + off_img, bank_feat=v.bank_feat + off_txt, z_v=v.z_v, z_t=v.z_t,
                        z_y=v.z_y, clean=v.clean, attributes=v.attributes)
    assert not np.array_equal(S.respond(Identity(), None, shifted), right)
    assert np.array_equal(S.respond(Identity(), None, shifted, (off_img, off_txt)), right)
