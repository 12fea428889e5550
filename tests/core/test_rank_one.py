"""The closed-form key-value edit (ecif/core/rank_one.py, docs/math.md §19) against its explicit
ridge solution, its limit and its specificity."""

from __future__ import annotations

import pytest
import torch

from ecif.core.rank_one import edit_residual, rank_one_edit, ridge_edit

D = torch.float64


def _setup(d_out=7, d_in=12, m=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g, dtype=D)
    K = torch.randn(m, d_in, generator=g, dtype=D)
    V = torch.randn(m, d_out, generator=g, dtype=D)
    X = torch.randn(3 * d_in, d_in, generator=g, dtype=D)
    C = X.T @ X / len(X) + 0.1 * torch.eye(d_in, dtype=D)
    return W, K, V, C


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("use_c", [False, True])
def test_low_rank_form_equals_ridge_solution(m, use_c):
    W, K, V, C = _setup(m=m)
    C = C if use_c else None
    for ridge in (1e-3, 0.5, 10.0):
        a = rank_one_edit(W, K, V, C, ridge=ridge)
        b = ridge_edit(W, K, V, C, ridge=ridge)
        assert float((a - b).abs().max()) < 1e-10
        assert torch.linalg.matrix_rank(a - W).item() == m


def test_single_key_vector_is_the_stated_rank_one_formula():
    W, K, V, C = _setup()
    k, v = K[0], V[0]
    ridge = 0.3
    Cik = torch.linalg.solve(C, k)
    ref = W + torch.outer(v - W @ k, Cik) / (ridge + k @ Cik)
    assert float((rank_one_edit(W, k, v, C, ridge=ridge) - ref).abs().max()) < 1e-12


@pytest.mark.parametrize("m", [1, 3])
def test_value_reached_as_ridge_vanishes(m):
    W, K, V, C = _setup(m=m)
    errs = [float(edit_residual(rank_one_edit(W, K, V, C, ridge=r), K, V).abs().max())
            for r in (1.0, 1e-2, 1e-4, 1e-6, 1e-10)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-8
    assert errs[0] > 1e-3  # the ridge really pulls the edit back at ridge 1


@pytest.mark.parametrize("m", [1, 3])
def test_inputs_orthogonal_to_keys_in_c_inverse_metric_are_unchanged(m):
    W, K, V, C = _setup(m=m)
    W2 = rank_one_edit(W, K, V, C, ridge=1e-3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, W.shape[1], generator=g, dtype=D)
    # project x onto {x : K C^{-1} x = 0}: x - K^T (K C^{-1} K^T)^{-1} K C^{-1} x
    CiK = torch.linalg.solve(C, K.T)
    xo = x - (K.T @ torch.linalg.solve(K @ CiK, CiK.T @ x.T)).T
    assert float((K @ torch.linalg.solve(C, xo.T)).abs().max()) < 1e-10
    assert float((xo @ W2.T - xo @ W.T).abs().max()) < 1e-10
    # and a generic input does move (the check above is not vacuous)
    assert float((x @ W2.T - x @ W.T).abs().max()) > 1e-3


def test_bad_input_is_refused_with_the_fix():
    W, K, V, C = _setup(m=2)
    with pytest.raises(ValueError, match="keys must have shape"):
        rank_one_edit(W, K[:, :-1], V, C)
    with pytest.raises(ValueError, match="values must have shape"):
        rank_one_edit(W, K, V[:1], C)
    with pytest.raises(ValueError, match="key covariance"):
        rank_one_edit(W, K, V, C[:-1, :-1])
    not_pd = C.clone()
    not_pd[0, 0] = -1.0
    with pytest.raises(ValueError, match="not positive definite"):
        rank_one_edit(W, K, V, not_pd)
    asym = C.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        ridge_edit(W, K, V, asym)
    with pytest.raises(ValueError, match="ridge"):
        ridge_edit(W, K, V, C, ridge=0.0)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        rank_one_edit(W, K, V, C, ridge=-1.0)
