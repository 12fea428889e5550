"""ECIF against leave-out retraining, and the engine's internal consistency."""

import numpy as np
import pytest
import torch

from core_problems import fitted_loo_problem, pearson, random_theta, spearman, tiny_objective

from ecif.core.evaluate import validation_gradient, validation_loss
from ecif.core.fit import fit
from ecif.core.influence import ECIF, VARIANTS


@pytest.fixture(scope="module", params=["linear", "lora"])
def fitted(request):
    d, obj, val, res, eng = fitted_loo_problem(request.param)
    assert res.converged and res.grad_norm <= 1e-9
    assert eng.solver.report["min_eigenvalue"] > 0
    return request.param, d, obj, val, res, eng


@pytest.mark.slow
def test_influence_scores_agree_with_leave_one_out(fitted):
    kind, d, obj, val, res, eng = fitted
    g_val = validation_gradient(val, res.theta)
    scores = eng.influence_scores(g_val)
    base = validation_loss(val, res.theta)
    idx = np.r_[np.flatnonzero(d.misaligned)[:15], np.flatnonzero(~d.misaligned)[:30]]
    actual = []
    for k in idx:
        refit = fit(obj.without([k]), theta_init=res.theta, preconditioner=eng.solver)
        assert refit.converged and refit.grad_norm <= 1e-9, refit.summary()
        actual.append(validation_loss(val, refit.theta) - base)
    actual = np.array(actual)
    stats = {v: (pearson(scores[v].numpy()[idx], actual), spearman(scores[v].numpy()[idx], actual)) for v in VARIANTS}
    print(f"\n[{kind}] leave-one-out agreement on {len(idx)} pairs ({int(d.misaligned[idx].sum())} misaligned):")
    for v, (p, s) in stats.items():
        print(f"  {v:9s} pearson {p:.3f}  spearman {s:.3f}")
    assert stats["ecif"][0] >= 0.9 and stats["newton"][0] >= 0.9
    # accounting for the negative role is what makes ECIF better than the classical IF
    assert stats["ecif"][0] > stats["positive"][0]
    # misaligned pairs are more harmful than clean ones, and ECIF gets the sign of most removals
    assert actual[:15].mean() < actual[15:].mean()
    assert np.mean(np.sign(scores["ecif"].numpy()[idx]) == np.sign(actual)) >= 0.8


@pytest.mark.slow
def test_group_removal_agrees_with_group_retraining(fitted):
    kind, d, obj, val, res, eng = fitted
    g_val = validation_gradient(val, res.theta)
    base = validation_loss(val, res.theta)
    rng = np.random.default_rng(0)
    pred = {"ecif": [], "newton": [], "positive": []}
    actual = []
    for _ in range(10):
        group = rng.choice(obj.n, size=int(rng.integers(15, 31)), replace=False)  # 5-10 % of pairs
        refit = fit(obj.without(group), theta_init=res.theta, preconditioner=eng.solver)
        assert refit.converged, refit.summary()
        actual.append(validation_loss(val, refit.theta) - base)
        for v in pred:
            pred[v].append(eng.predicted_change(g_val, group, v))
    stats = {v: pearson(p, actual) for v, p in pred.items()}
    print(f"\n[{kind}] group removal (10 sets of 5-10 %), pearson:", {v: round(p, 3) for v, p in stats.items()})
    assert stats["ecif"] >= 0.85 and stats["newton"] >= 0.85
    # additive ECIF is the sum of single-pair shifts
    group = np.arange(0, 300, 13)
    summed = sum(eng.param_shift([k], "ecif") for k in group)
    assert torch.allclose(eng.param_shift(group, "ecif"), summed, atol=1e-12)


def test_scores_shifts_and_edits_are_consistent():
    obj = tiny_objective("lora", n=16, batch_size=6, lam=2.0)
    res = fit(obj)
    assert res.converged
    eng = ECIF(obj, res.theta, "dense", damping=1e-3)
    g_val = random_theta(obj, seed=7) - obj.theta0
    scores = eng.influence_scores(g_val)
    shifts = {v: eng.pair_shifts(variant=v) for v in VARIANTS}
    for v in VARIANTS:
        # directional all-pairs form == explicit per-pair shifts
        np.testing.assert_allclose(scores[v].numpy(), (shifts[v] @ g_val).numpy(), atol=1e-9, rtol=1e-7)
        for k in (0, 9):
            assert torch.allclose(eng.param_shift([k], v), shifts[v][k], atol=1e-12)
    # positive + negative = ecif; newton for one pair = exact gradient difference
    np.testing.assert_allclose((scores["positive"] + scores["negative"]).numpy(), scores["ecif"].numpy(), atol=1e-14)
    g_diff = obj.gradient(res.theta) - obj.without([4]).gradient(res.theta)
    assert torch.allclose(eng.gradient_term([4], "newton"), g_diff, atol=1e-12)
    assert torch.allclose(eng.edited_params([1, 2], "ecif"), res.theta + shifts["ecif"][1] + shifts["ecif"][2],
                          atol=1e-12)


def test_relative_and_self_influence_match_explicit_formulas():
    obj = tiny_objective("linear", n=14, batch_size=7, lam=2.0)
    res = fit(obj)
    assert res.converged
    g_z = torch.randn(obj.n_params, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for solver in ("dense", "cg"):
        eng = ECIF(obj, res.theta, solver, damping=1e-3, **({"rtol": 1e-12} if solver == "cg" else {}))
        shifts = eng.pair_shifts(indices=[0, 3, 5])
        ris = eng.relative_influence(g_z, indices=[0, 3, 5])
        expect = (shifts @ g_z) / shifts.norm(dim=1, keepdim=True)
        np.testing.assert_allclose(ris.numpy(), expect.numpy(), rtol=1e-7, atol=1e-12)
        own = obj.pair_gradients(res.theta, ("pos",), [0, 3, 5])
        np.testing.assert_allclose(eng.self_influence([0, 3, 5]).numpy(), (own * shifts).sum(1).numpy(),
                                   rtol=1e-7, atol=1e-14)


def test_engine_errors():
    obj = tiny_objective()
    eng = ECIF(obj, random_theta(obj), "dense", damping=10.0)
    with pytest.raises(ValueError, match="unknown variant"):
        eng.param_shift([0], "tracin")
    with pytest.raises(ValueError, match="val_gradient must have shape"):
        eng.influence_scores(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty"):
        eng.param_shift([], "ecif")
    with pytest.raises(ValueError, match="theta must have shape"):
        ECIF(obj, torch.zeros(2, dtype=torch.float64))
