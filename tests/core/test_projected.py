"""Projected influence (ecif/core/projected.py) on the tiny block model of tests/core/test_blocks.py:
the full-dimension projection with the exact Hessian reproduces the exact solve, the projected
Gauss-Newton matrix equals autograd's ``J^T grad^2_S l J``, the projected scores at a fitted optimum
against the exact solve as k grows, determinism from the seed, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecif.core import terms
from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.core.projected import KroneckerProjection, ProjectedInfluence, factor_layout
from ecif.core.solvers import DenseSolver

from tests.core.test_blocks import _problem, _rows

D = torch.float64


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def small():
    param, obj, theta, g = _problem(n=8, targets=("qv",), lam=0.5)
    return param, obj, theta, g


def test_full_dimension_with_the_exact_hessian_is_the_exact_solve(small):
    param, obj, theta, g = small
    H = obj.hessian(theta)
    mu = max(0.0, -float(torch.linalg.eigvalsh(H)[0])) + 0.1  # theta is no optimum: damp to positive definite
    gv = torch.randn(param.n_params, generator=g, dtype=D)
    exact = ECIF(obj, theta, solver=DenseSolver(H, mu)).influence_scores(gv)
    pi = ProjectedInfluence(obj, theta, k=10**6, curvature="hessian", damping=mu)
    assert pi.dim == param.n_params  # every factor kept whole: R = I
    got = pi.influence_scores(gv)
    for v in exact:
        assert _rel(got[v], exact[v]) < 1e-9


def test_projection_applies_the_kronecker_blocks(small):
    param, obj, theta, g = small
    proj = KroneckerProjection(factor_layout(param), 3, seed=1)
    R = proj.directions(0, proj.dim).T  # (P, K)
    v = torch.randn(param.n_params, generator=g, dtype=D)
    assert torch.allclose(proj.project(v), R.T @ v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(proj.gram(), R.T @ R, rtol=1e-12, atol=1e-12)
    # a rank-1 factor A (1, 8) keeps its row and gets k // 1 = 3 columns; B (8, 1) likewise
    f = next(f for f in factor_layout(param) if f.name == "img.0.q.A")
    j = factor_layout(param).index(f)
    assert proj.dims[j] == 3 and proj.left[j] is None and proj.right[j].shape == (8, 3)


def test_gauss_newton_matrix_equals_autograd(small):
    param, obj, theta, g = small
    pi = ProjectedInfluence(obj, theta, k=10**6, curvature="gauss_newton")
    J = torch.func.jacrev(obj.similarity)(theta)  # (M, b, b, P)
    S = obj.similarity(theta)

    def ell(s):
        return terms.pos(s, obj.masks).sum() / obj.n

    hs = torch.autograd.functional.hessian(ell, S).reshape(S.numel(), S.numel())
    Jf = J.reshape(S.numel(), -1)
    gn = Jf.T @ hs @ Jf + obj.lam * torch.eye(param.n_params, dtype=D)
    assert torch.allclose(pi.matrix, gn, rtol=1e-9, atol=1e-11 * float(gn.abs().max()))
    # projected per-pair gradients: explicit per-pair gradients (R = I)
    for name in ("pos", "negexact"):
        assert torch.allclose(pi.pair_gradients[name], obj.pair_gradients(theta, (name,)), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def fitted():
    param, obj, _, g = _problem(n=12, targets=("qv",), lam=2.0)
    res = fit(obj, gtol=1e-8, method="newton-cg")
    assert res.converged, res.summary()
    xv, yv = _rows(g, 12, 5, 8, "cls"), _rows(g, 12, 5, 6, "mean")
    val = ContrastiveObjective(param, xv, yv, BatchingProtocol.from_seed(12, 4, 1))
    gv = validation_gradient(val, res.theta)
    exact = ECIF(obj, res.theta, solver="dense").influence_scores(gv)
    return obj, res.theta, gv, exact


def test_projected_scores_approach_the_exact_solve(fitted):
    obj, theta, gv, exact = fitted
    x = exact["newton"]
    rows = {}
    for k in (1, 2, 4, 8):  # k = 8 keeps every factor of this model whole: the full space
        for curv in ("gauss_newton", "fisher", "hessian"):
            if curv == "hessian" and k == 2:
                continue  # K Hessian-vector products each: only where the test needs it
            pi = ProjectedInfluence(obj, theta, k=k, curvature=curv)
            got = pi.influence_scores(gv)["newton"]
            rows[k, curv] = (pi.dim, _corr(got, x), _rel(got, x))
            print(f"\n[projected] k {k} {curv:>12}: K {pi.dim:>2} of P {obj.n_params}, Pearson "
                  f"{rows[k, curv][1]:.4f}, rel. L2 {rows[k, curv][2]:.3e}", end="")
    assert rows[8, "hessian"][0] == obj.n_params and rows[8, "hessian"][2] < 1e-8  # full space, exact Hessian
    # measured: Gauss-Newton Pearson 0.63, 0.78, 0.91, 0.94 for k = 1, 2, 4, 8 (rel. L2 0.82 .. 0.43)
    assert rows[8, "gauss_newton"][1] >= 0.9 and rows[4, "gauss_newton"][1] >= 0.85
    assert rows[8, "gauss_newton"][2] < rows[2, "gauss_newton"][2] < rows[1, "gauss_newton"][2]
    assert rows[4, "hessian"][2] < rows[1, "hessian"][2]


def test_deterministic_from_the_seed(fitted):
    obj, theta, gv, _ = fitted
    a = ProjectedInfluence(obj, theta, k=2, seed=3).influence_scores(gv)["ecif"]
    b = ProjectedInfluence(obj, theta, k=2, seed=3).influence_scores(gv)["ecif"]
    c = ProjectedInfluence(obj, theta, k=2, seed=4).influence_scores(gv)["ecif"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input(small):
    param, obj, theta, _ = small
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="projection dimension k must be an integer >= 1"):
            ProjectedInfluence(obj, theta, k=k)
    with pytest.raises(ValueError, match="unknown curvature"):
        ProjectedInfluence(obj, theta, k=2, curvature="kfac")
    with pytest.raises(ValueError, match="damping must be >= 0"):
        ProjectedInfluence(obj, theta, k=2, damping=-1.0)
    pi = ProjectedInfluence(obj, theta, k=2)
    with pytest.raises(ValueError, match="val_gradient must have shape"):
        pi.influence_scores(torch.zeros(3, dtype=D))
    assert np.isfinite(pi.report["max_eigenvalue"])
