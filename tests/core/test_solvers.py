import numpy as np
import pytest
import torch

from core_problems import random_theta, tiny_objective

from ecif.core.fit import fit
from ecif.core.solvers import CGSolver, DenseSolver, SolverError, SpectralPreconditioner, make_solver


def _spd(p=20, seed=0, cond=50.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, cond, p, dtype=torch.float64)) @ q.T


def test_dense_solves_and_reports():
    h = _spd()
    b = torch.randn(20, 3, dtype=torch.float64)
    s = DenseSolver(h, damping=0.5)
    np.testing.assert_allclose(s.solve(b).numpy(), torch.linalg.solve(h + 0.5 * torch.eye(20), b).numpy(),
                               atol=1e-12)
    assert abs(s.report["min_eigenvalue"] - 1.0) < 1e-10 and s.report["positive_definite"]
    norms = s.inverse_norms(b.T)
    np.testing.assert_allclose(norms.numpy(), s.solve(b).norm(dim=0).numpy(), atol=1e-12)


def test_dense_warns_when_indefinite():
    h = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        s = DenseSolver(h)
    assert s.report["min_eigenvalue"] == -1.0 and not s.report["positive_definite"]
    DenseSolver(h, damping=1.5)  # damped past the negative eigenvalue: no warning


def test_cg_agrees_with_dense_on_objective():
    obj = tiny_objective("lora", batch_size=5, lam=1.0)
    th = fit(obj).theta  # at theta0 LoRA sits on a saddle (B = 0); the optimum is well-conditioned
    dense = make_solver(obj, th, "dense", damping=0.01)
    assert dense.report["positive_definite"]
    cg = make_solver(obj, th, "cg", damping=0.01, rtol=1e-12)
    b = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_dense, x_cg = dense.solve(b), cg.solve(b)
    assert torch.allclose(x_dense, x_cg, atol=1e-9, rtol=1e-8)
    assert cg.report["relative_residual"] < 1e-11 and cg.report["iterations"] <= 2 * obj.n_params
    b2 = torch.stack([b, 2 * b], dim=1)
    assert torch.allclose(cg.solve(b2)[:, 1], 2 * x_cg, atol=1e-9)


def test_cg_materialises_the_hessian_when_many_columns_cost_more_than_p_products():
    h = _spd(p=20, cond=1e3)
    calls = []
    hvp = lambda v: calls.append(1) or h @ v  # noqa: E731
    b = torch.randn(20, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(h + 0.1 * torch.eye(20, dtype=torch.float64), b)
    lazy = CGSolver(hvp, 20, damping=0.1, rtol=1e-12)
    x = lazy.solve(b)  # first column by CG (~20 its), then 11 x 20 > 20: form H from 20 products
    its = lazy.report["solves"][0]["iterations"] + 1  # + the true-residual product
    assert lazy.report["materialised"]["hvps"] == 20 and len(calls) == its + 20
    torch.testing.assert_close(x, exact, rtol=1e-9, atol=1e-10)
    n_before = len(calls)
    torch.testing.assert_close(lazy.solve(b[:, 0]), exact[:, 0], rtol=1e-9, atol=1e-10)
    assert len(calls) == n_before  # later solves reuse the dense factorisation
    iterating = CGSolver(h.__matmul__, 20, damping=0.1, rtol=1e-12, materialise=False)
    torch.testing.assert_close(iterating.solve(b), x, rtol=1e-9, atol=1e-10)
    assert "materialised" not in iterating.report and len(iterating.report["solves"]) == 12
    two = CGSolver(h.__matmul__, 20, damping=0.1, rtol=1e-12)
    two.solve(b[:, :2])  # one more column costs fewer products than P: no Hessian
    assert "materialised" not in two.report
    neg = torch.diag(torch.tensor([-1.0] + [1.0] * 3, dtype=torch.float64))
    with pytest.raises(SolverError, match="not positive definite"):  # CG on e_1 never meets -1
        CGSolver(neg.__matmul__, 4, rtol=1e-12).solve(torch.eye(4, dtype=torch.float64)[:, [1, 2, 3, 1, 2, 3, 0]])


def test_cg_fails_loudly():
    h = _spd(cond=1e4)
    with pytest.raises(SolverError, match="did not converge"):
        CGSolver(lambda v: h @ v, 20, rtol=1e-12, max_iter=3).solve(torch.ones(20, dtype=torch.float64))
    neg = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    with pytest.raises(SolverError, match="non-positive curvature"):
        CGSolver(lambda v: neg @ v, 2).solve(torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        s = CGSolver(lambda v: h @ v, 20, rtol=1e-12, max_iter=3, strict=False)
        s.solve(torch.ones(20, dtype=torch.float64))
    assert s.report["solves"][-1]["converged"] is False


def test_solver_argument_errors():
    with pytest.raises(ValueError, match="damping"):
        DenseSolver(torch.eye(2, dtype=torch.float64), damping=-1)
    with pytest.raises(ValueError, match="square"):
        DenseSolver(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows"):
        DenseSolver(torch.eye(2, dtype=torch.float64)).solve(torch.ones(3, dtype=torch.float64))
    obj = tiny_objective()
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver(obj, random_theta(obj), "lissa")


def test_lanczos_extremes_match_the_dense_eigenvalues():
    from ecif.core.solvers import lanczos_extremes

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(120, 120, generator=g, dtype=torch.float64))
    evals = torch.cat([torch.tensor([-0.5, 0.01], dtype=torch.float64), torch.linspace(0.2, 3.0, 117, dtype=torch.float64),
                       torch.tensor([9.0], dtype=torch.float64)])
    h = q @ torch.diag(evals) @ q.T
    lo, hi = lanczos_extremes(lambda v: h @ v, 120, iters=60)
    assert lo == pytest.approx(-0.5, abs=1e-8) and hi == pytest.approx(9.0, abs=1e-8)
    lo, hi = lanczos_extremes(lambda v: h @ v, 120, iters=5)  # few steps: inside the spectrum
    assert -0.5 <= lo and hi <= 9.0 + 1e-12


def test_spectral_preconditioner_full_lanczos_is_the_eigendecomposition():
    """With as many Lanczos steps as parameters the Ritz pairs are the eigenpairs: M = H + mu I
    (all eigenvalues above the floor), and preconditioned CG converges in one iteration."""
    h = _spd(p=12, cond=30.0)
    pre = SpectralPreconditioner(lambda v: h @ v, 12, bulk=1.0, steps=12, damping=0.5)
    np.testing.assert_allclose(pre.ritz_values.numpy(), torch.linalg.eigvalsh(h).numpy(), atol=1e-10)
    b = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(h + 0.5 * torch.eye(12, dtype=torch.float64), b)
    np.testing.assert_allclose(pre(b).numpy(), exact.numpy(), atol=1e-10)
    s = CGSolver(lambda v: h @ v, 12, damping=0.5, rtol=1e-10, preconditioner=pre)
    np.testing.assert_allclose(s.solve(b).numpy(), exact.numpy(), atol=1e-9)
    assert s.report["iterations"] == 1


def test_preconditioned_cg_agrees_with_dense_on_objective():
    """make_solver(precondition=...): Lanczos on the Hessian of a subsample of the batches
    (a poor, indefinite stand-in on a tiny problem) steers CG to the same solution as the
    dense solve, to the tolerance asked, for a vector and for the influence scores."""
    from ecif.core.influence import ECIF

    obj = tiny_objective("lora", n=40, batch_size=5, lam=1.0)
    th = fit(obj, gtol=1e-11).theta
    dense = make_solver(obj, th, "dense", damping=0.01)
    pcg = make_solver(obj, th, "cg", damping=0.01, rtol=1e-12, precondition=10, precondition_steps=8)
    assert isinstance(pcg.preconditioner, SpectralPreconditioner)
    assert pcg.preconditioner.report["steps"] == 8
    b = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(pcg.solve(b).numpy(), dense.solve(b).numpy(), rtol=0,
                               atol=1e-9 * float(dense.solve(b).abs().max()))
    assert pcg.report["relative_residual"] <= 1e-11
    s_dense = ECIF(obj, th, solver=dense).influence_scores(b)
    s_pcg = ECIF(obj, th, solver=pcg).influence_scores(b)
    for v in s_dense:
        np.testing.assert_allclose(s_pcg[v].numpy(), s_dense[v].numpy(), rtol=0,
                                   atol=1e-9 * float(s_dense[v].abs().max()))


def test_spectral_preconditioner_errors():
    h = _spd(p=6)
    with pytest.raises(ValueError, match="bulk"):
        SpectralPreconditioner(lambda v: h @ v, 6, bulk=0.0)
    obj = tiny_objective("lora", batch_size=5, lam=0.0)
    with pytest.raises(ValueError, match="lam \\+ damping"):
        make_solver(obj, obj.theta0, "cg", precondition=5)


def test_cg_progress_every_k_iterations():
    h = _spd(p=30, cond=1000.0)
    seen = []
    s = CGSolver(lambda v: h @ v, 30, rtol=1e-10, progress=lambda it, rel: seen.append((it, rel)), progress_every=3)
    s.solve(torch.ones(30, dtype=torch.float64))
    assert seen and [it for it, _ in seen] == list(range(3, s.report["iterations"] + 1, 3))
    assert all(rel > 1e-10 for _, rel in seen[:-1])
