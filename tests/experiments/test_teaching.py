"""ecif.experiments.teaching: the toy logistic influence against exact leave-one-out and autograd,
the contrastive demo's zeta device, and the findings sentences on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from ecif.experiments import teaching as T


@pytest.fixture(scope="module")
def digits():
    return T.digits_problem(120, seed=0)


def test_digits_problem_shapes_and_flips(digits) -> None:
    assert digits.x.shape == (120, 65) and digits.x.dtype == torch.float64
    assert set(digits.y.unique().tolist()) == {-1.0, 1.0}
    assert digits.flipped.sum() == 10 and digits.x_test.shape[1] == 65
    assert torch.all(digits.x[:, -1] == 1)  # bias column
    with pytest.raises(ValueError, match="n_train"):
        T.digits_problem(10_000)


def test_closed_forms_match_autograd(digits) -> None:
    theta = torch.linspace(-0.3, 0.3, 65, dtype=torch.float64)
    keep = torch.ones(120, dtype=torch.float64)
    keep[[3, 7]] = 0
    f = lambda th: T.logistic_loss(th, digits.x, digits.y, 0.05, keep=keep)  # noqa: E731
    assert torch.allclose(T.logistic_grad(theta, digits.x, digits.y, 0.05, keep=keep), grad(f)(theta),
                          atol=1e-12)
    assert torch.allclose(T.logistic_hessian(theta, digits.x, digits.y, 0.05, keep=keep),
                          hessian(f)(theta), atol=1e-12)


def test_influence_is_the_documented_formula(digits) -> None:
    """IS(k) = grad L_test^T (1/n) H^-1 grad l_k with autograd's gradient and Hessian."""
    res = T.fit_logistic(digits, 0.01)
    assert res.grad_norm < 1e-10 and res.min_eig > 0
    n = len(digits.y)
    L = lambda th: T.logistic_loss(th, digits.x, digits.y, 0.01)  # noqa: E731
    H = hessian(L)(res.theta)
    g_test = grad(lambda th: T.logistic_loss(th, digits.x_test, digits.y_test))(res.theta)
    for k in (0, 5, 17):
        g_k = grad(lambda th: T.logistic_loss(th, digits.x[k:k + 1], digits.y[k:k + 1]))(res.theta)
        expected = float(g_test @ torch.linalg.solve(H, g_k)) / n
        assert T.logistic_influence(digits, res)[k] == pytest.approx(expected, rel=1e-8, abs=1e-15)


def test_influence_agrees_with_exact_leave_one_out(digits) -> None:
    res = T.fit_logistic(digits, 0.01)
    loo = T.logistic_loo(digits, res)
    assert loo["max_grad_norm"] <= 1e-9
    assert loo["pearson"] >= 0.99 and loo["spearman"] >= 0.95
    # the batched refits are the sequential ones: refit k by plain Newton on L_{-k}
    k = 4
    keep = torch.ones(120, dtype=torch.float64)
    keep[k] = 0
    th, _, _ = T._newton(res.theta, digits.x, digits.y, 0.01, keep=keep)
    base = float(T.logistic_loss(res.theta, digits.x_test, digits.y_test))
    assert loo["actual"][k] == pytest.approx(
        float(T.logistic_loss(th, digits.x_test, digits.y_test)) - base, rel=1e-6, abs=1e-13)
    # damping shrinks the estimate
    damped = T.logistic_influence(digits, res, damping=1.0)
    assert np.abs(damped).sum() < np.abs(loo["predicted"]).sum()


def test_zeta_device_gives_neg_and_removal_gives_negexact() -> None:
    demo = T.contrastive_demo(n=60, batch_size=20, lam=0.5, seed=1)
    z = T.zeta_check(demo, slot=2)
    assert z["d_dzeta"] == pytest.approx(z["neg"], rel=1e-6)
    assert z["removal"] == pytest.approx(z["negexact"], rel=1e-10)
    assert z["negexact"] >= z["neg"] > 0
    roles = T.pair_roles(demo, size=6)
    assert roles["S"].shape == (6, 6) and np.all(roles["negexact"] >= roles["neg"])
    assert np.all(roles["P"].sum(1) <= 1 + 1e-12) and np.all(roles["Q"].sum(0) <= 1 + 1e-12)  # a corner


def _rows(key, pearsons, slopes):
    return [{key: v, "pearson": p, "spearman": p, "slope": s, "min_eig": v}
            for v, p, s in zip((1.0, 0.01, 1e-4), pearsons, slopes)]


def test_findings_follow_the_numbers() -> None:
    toy = {"pearson": 0.9991, "slope": 0.98}
    lam_rows = _rows("lam", (0.9999, 0.99, 0.5), (1, 1, 0.4))
    damp = [{"damping": 0.0, "pearson": 0.5, "spearman": 0.5, "slope": 0.4},
            {"damping": 0.1, "pearson": 0.4, "spearman": 0.3, "slope": 0.05}]
    zeta = {"d_dzeta": 1.5, "neg": 1.5, "removal": 1.6, "negexact": 1.6, "pos": 3.0}
    con = {"clean": {"positive": 0.6, "ecif": 0.95}, "misaligned": {"positive": 0.97, "ecif": 0.99}}
    text = T.findings(toy, lam_rows, damp, zeta, con)
    assert text[0].startswith("Convex toy: the first-order estimate agrees almost exactly")
    assert "Pearson 0.9991" in text[0]
    assert "at lam = 0.0001 the Pearson falls to 0.500" in text[1]
    assert "from 0.400 (mu = 0) to 0.050 (mu = 0.1)" in text[2]
    assert "Pearson 0.600 against 0.950 for ECIF" in text[4]
    assert "both follow retraining" in text[5]
    # other numbers, other sentences
    toy2 = {"pearson": 0.9, "slope": 0.5}
    con2 = {"clean": {"positive": 0.9, "ecif": 0.91}, "misaligned": {"positive": 0.5, "ecif": 0.8}}
    text2 = T.findings(toy2, _rows("lam", (0.2, 0.5, 0.9), (1, 1, 1)), damp, zeta, con2)
    assert "only roughly follows" in text2[0]
    assert "this toy did not break" in text2[1]
    assert "agree about equally well" in text2[4]
    assert "the Pearson is 0.500 for positive-only" in text2[5]


def test_exercise_helpers() -> None:
    rows = _rows("lam", (0.9, 0.8, 0.7), (1, 1, 1))
    assert T.row(rows, "lam", 0.01)["pearson"] == 0.8
    with pytest.raises(KeyError, match="no row"):
        T.row(rows, "lam", 3.0)
    loo = {"predicted": np.array([0.3, -2.0, -1.0, 0.5]), "flipped": np.array([0, 1, 0, 1], bool)}
    assert T.flipped_among_most_harmful(loo, 2) == 1
    assert T.check_guess(None, True).startswith("Set your guess")
    assert T.check_guess(True, np.bool_(True)).startswith("Right")
    assert T.check_guess(3, 2).startswith("Not this time")
    assert T.check_guess((True, False), (np.bool_(True), False)).startswith("Right")


# ------------------------------------------------------------------- non-convex: section 4b


@pytest.fixture(scope="module")
def pooled():
    return T.pooled_digits(T.digits_problem(200, seed=0))


def test_pooled_digits_average_two_by_two_blocks(pooled) -> None:
    raw = T.digits_problem(200, seed=0)
    assert pooled.x.shape == (200, 17) and torch.all(pooled.x[:, -1] == 1)
    img = raw.x[5, :64].reshape(8, 8)
    assert float(pooled.x[5, 1]) == pytest.approx(float(img[0:2, 2:4].mean()), abs=1e-15)
    assert torch.equal(pooled.y, raw.y) and pooled.x_test.shape[1] == 17


def test_net_closed_forms_match_autograd(pooled) -> None:
    """Batched closed-form gradient and Hessian of the two-layer network against torch.func,
    with a different removal mask per row."""
    th = 0.3 * torch.randn(3, 36, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = torch.ones(3, 200, dtype=torch.float64)
    keep[0, 4] = keep[2, [1, 9]] = 0
    for m in range(3):
        f = lambda t: T.net_loss(t[None], pooled.x, pooled.y, 0.05, keep=keep[m:m + 1])[0]  # noqa: E731
        assert torch.allclose(T.net_grad(th, pooled.x, pooled.y, 0.05, keep=keep)[m], grad(f)(th[m]),
                              atol=1e-13)
        assert torch.allclose(T.net_hessian(th, pooled.x, pooled.y, 0.05, keep=keep)[m],
                              hessian(f)(th[m]), atol=1e-13)


@pytest.fixture(scope="module")
def study():
    return T.nonconvex_study(T.digits_problem(200, seed=0))


def test_nonconvex_fit_is_a_saddle_that_damping_makes_positive_definite(pooled, study) -> None:
    res = T.fit_net(pooled, 1e-3)
    assert res.grad_norm <= 1e-10 and res.unit_gap < 1e-6  # stationary, units still equal
    H = T.net_hessian(res.theta[None], pooled.x, pooled.y, 1e-3)[0]
    emin = float(torch.linalg.eigvalsh(H)[0])
    assert emin < -1e-3 and emin == pytest.approx(res.min_eig, rel=1e-10)  # a saddle
    # the damping rows' eigenvalue is that of H + mu I, computed here independently
    rows = study["damping_rows"]
    assert study["mu_pd"] == pytest.approx(-1.5 * emin, rel=1e-10)
    for r in rows:
        shifted = float(torch.linalg.eigvalsh(H + r["damping"] * torch.eye(36, dtype=torch.float64))[0])
        assert r["min_eig"] == pytest.approx(shifted, rel=1e-8, abs=1e-12)
        assert (shifted > 0) == (r["damping"] > -emin)
    assert T.row(rows, "damping", study["mu_pd"])["min_eig"] > 0


def test_nonconvex_refits_converge_and_agreement_degrades(pooled, study) -> None:
    lam_rows = study["lam_rows"]
    assert [r["lam"] for r in lam_rows] == [1e-3, 3e-3, 1e-2, 3e-2]
    for r in lam_rows:
        assert r["grad_norm"] <= 1e-10 and r["max_grad_norm"] <= 1e-9  # fit and refits converged
        assert r["min_eig_refits"] > 0  # every refit ended at a strict local minimum
    saddle, pulled = lam_rows[0], T.row(lam_rows, "lam", 1e-2)
    assert saddle["min_eig"] < 0 < pulled["min_eig"]
    assert saddle["pearson"] < 0.8
    # the refits fall off the saddle: their mean change is the all-data refit's, not the estimate's
    assert abs(saddle["mean_actual"] - saddle["escape"]) < 0.2 * abs(saddle["escape"])
    assert abs(saddle["mean_estimate"]) < 0.05 * abs(saddle["escape"])
    assert pulled["pearson"] >= 0.99  # the L2 pull makes it a strict minimum and the estimate works
    damped = T.row(study["damping_rows"], "damping", study["mu_pd"])
    assert damped["pearson"] < T.row(study["damping_rows"], "damping", 0.0)["pearson"]  # legal, not right
    # one batched refit is the same refit run alone
    res = T.fit_net(pooled, 1e-2)
    loo = T.net_loo(pooled, res)
    k = 7
    keep = torch.ones(1, 200, dtype=torch.float64)
    keep[0, k] = 0
    v = torch.linalg.eigh(T.net_hessian(res.theta[None], pooled.x, pooled.y, 1e-2))[1][0][:, 0]
    v = v * torch.sign(v[v.abs().argmax()])
    th, gn, _ = T._descend((res.theta + 1e-3 * v)[None], pooled.x, pooled.y, 1e-2, 2, keep, gtol=1e-9)
    test = T.net_loss(torch.cat([th, res.theta[None]]), pooled.x_test, pooled.y_test)
    assert float(gn[0]) <= 1e-9
    assert loo["actual"][k] == pytest.approx(float(test[0] - test[1]), rel=1e-6, abs=1e-12)


def test_nonconvex_sentences_state_the_computed_numbers(study) -> None:
    """The notebook's sentences carry this study's numbers, and other numbers give other words."""
    r0 = study["lam_rows"][0]
    text = T.nonconvex_findings(study, 0.9985)
    assert f"at a saddle: the Hessian's smallest eigenvalue is {r0['min_eig']:.2e}" in text[0]
    assert f"Pearson is {r0['pearson']:.3f}" in text[0] and "against 0.9985 on the convex toy" in text[0]
    assert f"changes the test loss by {r0['escape']:+.4f}" in text[1]
    assert f"by {r0['mean_actual']:+.4f} on average; the estimates average {r0['mean_estimate']:+.4f}" in text[1]
    damped = T.row(study["damping_rows"], "damping", study["mu_pd"])
    assert f"Pearson falls from {r0['pearson']:.3f} to {damped['pearson']:.3f}" in text[2]
    assert "at lam = 0.01 the smallest eigenvalue is" in text[3]
    convex = {**study, "lam_rows": study["lam_rows"][2:], "mu_pd": 0.0}
    other = T.nonconvex_findings(convex)
    assert "at a strict minimum" in other[0] and len(other) == 1
    never = {**study, "lam_rows": study["lam_rows"][:2]}
    assert T.nonconvex_findings(never)[-1] == "None of the lam values tried made the fit a strict minimum."
    full = T.findings({"pearson": 0.999, "slope": 1.0}, _rows("lam", (0.9, 0.8, 0.7), (1, 1, 1)),
                      [{"damping": 0.0, "pearson": 0.5, "spearman": 0.5, "slope": 0.4}],
                      {"d_dzeta": 1.0, "neg": 1.0, "removal": 1.1, "negexact": 1.1, "pos": 2.0},
                      {"clean": {"positive": 0.6, "ecif": 0.95}, "misaligned": {"positive": 0.97, "ecif": 0.99}},
                      nonconvex=study)
    assert full[3].startswith("Non-convex network") and full[-1].startswith("On misaligned pairs")
