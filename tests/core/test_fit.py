import pytest
import torch

from core_problems import fitted_loo_problem, tiny_objective

from ecif.core.fit import ConvergenceWarning, diagnose, fit, offset_ratio


@pytest.mark.parametrize("method", ["newton", "newton-cg"])
def test_fit_reaches_tolerance_deterministically(method):
    obj = tiny_objective("lora", n=20, batch_size=7, lam=0.5)
    a = fit(obj, method=method, gtol=1e-10)
    b = fit(obj, method=method, gtol=1e-10)
    assert a.converged and a.grad_norm <= 1e-10
    assert float(obj.gradient(a.theta).norm()) == pytest.approx(a.grad_norm, abs=1e-14)
    assert torch.equal(a.theta, b.theta)


def test_newton_and_newton_cg_find_the_same_optimum():
    # the objective is not convex (several optima): compare both methods inside one basin
    obj = tiny_objective("linear", n=20, batch_size=7, lam=0.5)
    a = fit(obj, method="newton", gtol=1e-11)
    start = a.theta + 0.01 * torch.randn(obj.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = fit(obj, theta_init=start, method="newton-cg", gtol=1e-11)
    assert b.converged and torch.allclose(a.theta, b.theta, atol=1e-8)


def test_mixed_precision_fit_reaches_the_float64_optimum():
    """float32 products in the Newton-CG steps (with a subsample start and a spectral
    preconditioner) change the path, not the optimum: the float64 gradient reaches gtol and the
    result equals the float64 fit's within the basin's conditioning."""
    from ecif.core.batching import BatchingProtocol
    from ecif.core.heads import LoRAHeads
    from ecif.core.objective import ContrastiveObjective
    from ecif.data.synthetic import synthetic_pairs

    d = synthetic_pairs(400, n_val=4, d_img=16, d_txt=12, width=24, n_classes=5, latent=6, shuffle_rate=0.1, seed=2)
    obj = ContrastiveObjective(LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=2, seed=2), d.x, d.y,
                               BatchingProtocol.from_seed(400, 25, 2), lam=0.5)
    ref = fit(obj, method="newton-cg", gtol=1e-10)
    lines = []
    mixed = fit(obj, method="newton-cg", gtol=1e-10, subsample=50, precondition=50, precision="mixed",
                progress=lines.append)
    assert ref.converged and mixed.converged
    assert float(obj.gradient(mixed.theta).norm()) <= 1e-10
    assert float((mixed.theta - ref.theta).norm()) < 1e-8 * float(ref.theta.norm())
    assert {line["n"] for line in lines} > {400}  # the subsample stages ran first
    with pytest.raises(ValueError, match="precision='mixed' needs method='newton-cg'"):
        fit(obj, method="newton", precision="mixed")
    with pytest.raises(ValueError, match="unknown fit precision"):
        fit(obj, precision="float16")


def test_unconverged_fit_warns_and_flags():
    obj = tiny_objective("linear", n=20, lam=0.1)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = fit(obj, max_iter=1)
    assert not res.converged and res.grad_norm > res.gtol and res.summary()["converged"] is False
    # the summary is saved with the fit (fit.json): no wall-clock time in it, only on the result
    assert res.seconds >= 0 and "seconds" not in res.summary() and "theta" not in res.summary()


def test_preconditioned_refit_equals_plain_refit():
    _, obj, _, res, eng = fitted_loo_problem("linear")
    # a warm-started leave-out refit: with the Hessian at theta_hat as preconditioner, and without
    a = fit(obj.without([3, 50]), theta_init=res.theta, preconditioner=eng.solver)
    b = fit(obj.without([3, 50]), theta_init=res.theta)
    assert a.converged and b.converged
    assert torch.allclose(a.theta, b.theta, atol=1e-8)
    assert float(obj.without([3, 50]).gradient(a.theta).norm()) <= 1e-9


def test_fit_argument_errors():
    obj = tiny_objective()
    with pytest.raises(ValueError, match="unknown fit method"):
        fit(obj, method="sgd")
    with pytest.raises(ValueError, match="theta_init must have shape"):
        fit(obj, theta_init=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="gtol"):
        fit(obj, gtol=0)


def test_offset_ratio_and_diagnosis():
    """``offset_ratio`` is ||mean|| / mean ||z - mean||; the diagnosis names a large offset and the
    largest curvature (docs/math.md §13), and nothing about the offset for centred features."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    spread = float(z.norm(dim=1).mean())
    u = torch.zeros(6, dtype=torch.float64)
    u[2] = 1.0
    assert offset_ratio(z) == pytest.approx(0.0, abs=1e-12)
    assert offset_ratio(z + 7.0 * spread * u) == pytest.approx(7.0, rel=1e-12)
    obj = tiny_objective("linear", n=12, lam=0.1)
    plain = diagnose(obj, obj.theta0)
    assert "common offset" not in plain and "Largest Hessian eigenvalue" in plain
    top = float(torch.linalg.eigvalsh(obj.hessian(obj.theta0)).abs().max())
    assert f"{top:.3g}" in plain  # the power iteration finds the largest eigenvalue
    shifted = type(obj)(obj.param, obj._x + 50.0 * obj._x.norm(dim=1).mean(), obj._y, obj.batching, lam=0.1)
    assert "common offset" in diagnose(shifted, obj.theta0)


def test_subsample_start_reaches_the_same_optimum_and_reports_progress():
    """fit(subsample=...) fits the first batches first, then the whole objective: the same
    optimum as a plain fit; progress lines name each stage's n and end at the full n."""
    obj = tiny_objective("lora", n=48, batch_size=6, lam=1.0)
    plain = fit(obj, gtol=1e-10, method="newton-cg")
    steps = []
    staged = fit(obj, gtol=1e-10, method="newton-cg", subsample=10, progress=steps.append)
    assert plain.converged and staged.converged
    assert torch.allclose(staged.theta, plain.theta, atol=1e-8)
    ns = [r["n"] for r in steps]
    assert ns[0] == 12 and ns[-1] == 48 and sorted(ns) == ns
    assert steps[-1]["grad_norm"] == staged.grad_norm


def test_batch_subset_keeps_whole_batches():
    obj = tiny_objective("lora", n=48, batch_size=6)
    sub = obj.batch_subset(13)
    assert sub.n == 18 and sub.batching.n_batches == 3 and sub.lam == obj.lam
    ids = obj.batching.batch_ids
    rows = ids < 3
    assert torch.equal(sub._x, obj._x[torch.as_tensor(rows)])
    k = int(torch.as_tensor(rows).nonzero()[1])  # a pair of the subset
    out = obj.without([k]).batch_subset(13)
    assert out.n == 18 and out.removed.tolist() == [int(rows[:k].sum())]
    assert float(out.loss(obj.theta0)) == pytest.approx(float(sub.without(out.removed).loss(obj.theta0)), abs=1e-14)


def test_preconditioned_newton_cg_reaches_the_same_optimum():
    """fit(precondition=...) preconditions the Newton-CG solves with the spectrum of a
    subsample's Hessian: same optimum to the tolerance, converged."""
    obj = tiny_objective("lora", n=48, batch_size=6, lam=1.0)
    plain = fit(obj, gtol=1e-10, method="newton-cg")
    pre = fit(obj, gtol=1e-10, method="newton-cg", precondition=12)
    assert pre.converged and torch.allclose(pre.theta, plain.theta, atol=1e-8)
