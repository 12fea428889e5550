"""Repairs of a systematic swap (ecif/experiments/repair.py) on a tiny shapes problem with the kit's
trained encoder: the text-tower edit is local and effective, the refits are the kit's retraining."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.heads import LoRAHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.core.terms import DTYPE
from ecif.experiments import repair as R
from ecif.experiments.cleaning import top_fraction
from ecif.experiments.retraining import retrain

LAYER = 3


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


@pytest.fixture(scope="module")
def case(shapes_encoder_dir):
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder
    from ecif.data.features import extract_features
    from ecif.data.noise import inject
    from ecif.experiments.detection import detection_scores

    torch.manual_seed(0)
    model, tok, _ = load_encoder("embedded", shapes_encoder_dir)
    model.eval()
    ds = load_dataset("shapes", sizes={"pretrain": 150, "train": 150, "val": 90, "test": 120})
    corruption = inject(ds["train"], "attribute_swap", 0.2, 0, systematic=True, attribute="shape")
    _, source, target = corruption.details["swap"]
    f = extract_features(model, tok, ds, corruption, progress=False)
    param = LoRAHeads(_t(f["W_img"]), _t(f["W_txt"]), float(f["log_logit_scale"]), rank=1, seed=0)
    obj = ContrastiveObjective(param, _t(f["x_train"]), _t(f["y_train"]), BatchingProtocol.from_seed(150, 50, 0), lam=0.1)
    res = fit(obj, gtol=1e-9)
    assert res.converged
    val = ContrastiveObjective(param, _t(f["x_val"]), _t(f["y_val"]), BatchingProtocol.from_seed(90, 45, 1))
    engine = ECIF(obj, res.theta)
    scores = detection_scores(engine, validation_gradient(val, res.theta), methods=("ecif",))["ecif"]
    spec, pre = ds.spec, ds["pretrain"]
    shape = np.asarray(pre.attributes["shape"])
    rows = np.concatenate([np.flatnonzero(shape == spec.values["shape"].index(target))[:6],
                           np.flatnonzero(shape == spec.values["shape"].index(source))[:4]])
    return R.RepairCase(
        model=model, tokenizer=tok, param=param, theta_hat=res.theta, objective=obj, text_mean=None, spec=spec,
        word=target, eval_x=_t(f["x_test"]), eval_attributes=ds["test"].attributes,
        ref_x=_t(f["x_val"]), ref_labels=np.asarray(ds["val"].labels), fix_x=_t(f["x_pretrain"][rows]),
        fix_captions=[pre.captions[i] for i in rows], ordinary_captions=list(dict.fromkeys(pre.captions)),
        oracle=np.flatnonzero(corruption.mask), scores=np.asarray(scores), info={"source": source, "solver": engine.solver})


@pytest.fixture(scope="module")
def edited(case):
    return R.run_repairs(case, repairs=("edit",), layer=LAYER, steps=25, lr=0.05)[0]


@pytest.fixture(scope="module")
def sets(case):
    return R.caption_sets(case.spec, case.eval_attributes, case.word)


def _embed(case, captions, weight):
    y = R._features(case, captions, weight, LAYER)
    v = case.param.encode_texts(case.theta_hat, y)
    return v / v.norm(dim=1, keepdim=True)


def test_edit_is_rank_one_at_the_chosen_layer(case, edited):
    lin = R.mlp_output_projection(case.model, LAYER)
    delta = edited.weight - lin.weight.detach().to(DTYPE)
    s = torch.linalg.svdvals(delta)
    assert s[0] > 1e-3 and float(s[1] / s[0]) < 1e-6
    assert edited.layer == LAYER and torch.equal(edited.theta, case.theta_hat)
    # the context manager restores the tower
    with R.edited_weight(lin, edited.weight):
        assert torch.allclose(lin.weight.to(DTYPE), edited.weight.to(lin.weight.dtype).to(DTYPE))
    assert not torch.allclose(lin.weight.to(DTYPE), edited.weight.to(lin.weight.dtype).to(DTYPE))


def test_edit_changes_only_where_intended(case, edited, sets):
    unrelated = sets["specificity"][0]
    named = sets["efficacy"][0]
    with torch.no_grad():
        drift_off = 1 - (_embed(case, unrelated, edited.weight) * _embed(case, unrelated, None)).sum(1)
        drift_on = 1 - (_embed(case, named, edited.weight) * _embed(case, named, None)).sum(1)
    assert float(drift_off.max()) < 1e-2  # captions without the word barely move
    assert float(drift_on.mean()) > 20 * float(drift_off.mean())  # captions with it move far more
    base = R.evaluate(case, R.Repaired("none", case.theta_hat), sets=sets)
    after = R.evaluate(case, edited, sets=sets)
    assert abs(after["specificity"] - base["specificity"]) <= 0.05
    assert after["unrelated_drift"] == pytest.approx(float(drift_off.mean()), rel=1e-6)


def test_edit_is_more_effective_than_the_unedited_model(case, edited, sets):
    base = R.evaluate(case, R.Repaired("none", case.theta_hat), sets=sets)
    after = R.evaluate(case, edited, sets=sets)
    assert after["efficacy"] >= base["efficacy"] + 0.1
    assert after["generalisation"] > base["generalisation"]


def test_refits_are_the_kits_retraining(case):
    pre = case.info["solver"]  # the engine's solver preconditions every warm refit, as in the cleaning stage
    got = {r.name: r for r in R.run_repairs(case, repairs=("oracle", "ecif_top_k"), fraction=0.1, preconditioner=pre)}
    direct = retrain(case.objective, case.theta_hat, case.oracle, preconditioner=pre)
    assert float((got["oracle"].theta - direct.theta).abs().max()) < 1e-10
    assert got["oracle"].info["removed_injected"] == len(case.oracle)
    top = top_fraction(case.scores, 0.1)
    assert float((got["ecif_top_k"].theta - retrain(case.objective, case.theta_hat, top, preconditioner=pre).theta).abs().max()) < 1e-10
    assert got["ecif_top_k"].info["removed"] == 15


def test_add_pairs_keeps_the_original_batches(case):
    obj = case.objective
    g = torch.Generator().manual_seed(3)
    m = 7
    x_new = torch.randn(m, obj._x.shape[1], generator=g, dtype=DTYPE)
    y_new = torch.randn(m, obj._y.shape[1], generator=g, dtype=DTYPE)
    plus = R.add_pairs(obj, x_new, y_new)
    assert plus.n == obj.n + m
    assert set(np.unique(plus.batching.batch_ids)) == set(np.unique(obj.batching.batch_ids))
    theta = case.theta_hat + 0.01 * torch.randn(len(case.theta_hat), generator=g, dtype=DTYPE)
    reg = 0.5 * obj.lam * float(((theta - obj.param.theta0) ** 2).sum())
    back = plus.without(np.arange(obj.n, obj.n + m))
    # removing the new pairs gives the original batches, scaled 1/(n + m) instead of 1/n
    assert float(back.loss(theta)) - reg == pytest.approx((float(obj.loss(theta)) - reg) * obj.n / (obj.n + m), rel=1e-10)
    assert abs(float(plus.loss(theta)) - float(back.loss(theta))) > 1e-6


def test_table_is_tidy_and_reports_every_repair(case):
    df = R.repair_table(case, repairs=("none", "oracle"), fraction=0.1, preconditioner=case.info["solver"])
    assert list(df.columns[:5]) == ["repair", "metric", "value", "before", "change"]
    assert len(df) == 2 * len(R.METRICS)
    none = df[df.repair == "none"]
    assert (none["change"] == 0).all()
    two = __import__("pandas").concat([df.assign(noise_seed=0), df.assign(noise_seed=1, value=df["value"] + 1.0)])
    s = R.summarise(two)
    assert list(s.index) == ["none", "oracle"]
    row = df[(df.repair == "oracle") & (df.metric == "efficacy")]["value"].item()
    assert s.loc["oracle", ("efficacy", "mean")] == pytest.approx(row + 0.5)
    assert s.loc["oracle", ("efficacy", "std")] == pytest.approx(np.sqrt(0.5))


def test_key_positions_and_bad_input(case):
    tok = case.tokenizer
    ids = tok(["a small red circle at the top left", "a large blue square at the center"])
    m = R.key_mask(tok, ids, "top left")
    assert m.sum().item() == 1 and int(ids[0][m[0]]) == int(tok(["left"])[0][1])
    assert R.key_mask(tok, ids, "square").sum(1).tolist() == [0, 1]
    assert R.key_mask(tok, ids, None).sum().item() == int((ids != 0).sum())
    with pytest.raises(ValueError, match="layer must lie"):
        R.mlp_output_projection(case.model, 99)
    with pytest.raises(ValueError, match="keys must be"):
        R.rank_one_text_edit(case, LAYER, keys="median")
    with pytest.raises(ValueError, match="unknown repair"):
        R.run_repairs(case, repairs=("retrain_all",))
    with pytest.raises(ValueError, match="label attribute"):
        R.RepairCase(**{**case.__dict__, "word": "red"})
    with pytest.raises(ValueError, match="no fix caption"):
        R.RepairCase(**{**case.__dict__, "fix_captions": ["a small red circle at the top left"] * len(case.fix_x)})
