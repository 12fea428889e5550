"""The EMI estimators pinned on cases with known answers (ecif/experiments/emi.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecif.experiments import emi as E


def correlated(rho: float, n: int = 4000, d: int = 2, seed: int = 0):
    """x, y in R^d, each dimension a standard bivariate normal with correlation rho."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, d))
    return x, y


def true_mi(rho: float, d: int = 2) -> float:
    return -0.5 * d * math.log(1 - rho**2)


RHOS = (0.2, 0.5, 0.8, 0.9)


# ----------------------------------------------------------------------------------- CLUB


@pytest.mark.parametrize("folds", [1, 2])
def test_club_increases_with_correlation_and_sits_above_the_true_mi(folds: int) -> None:
    est = [E.club(*correlated(r), folds=folds) for r in RHOS]
    assert all(a < b for a, b in zip(est, est[1:])), est
    for r, v in zip(RHOS, est):
        assert v >= true_mi(r), (r, v, true_mi(r))


def test_club_linear_matches_its_closed_form_for_gaussians() -> None:
    # with the exact conditional q(y|x) = N(rho x, 1 - rho^2) the bound is rho^2/(1-rho^2) per dim
    for r in RHOS:
        v = E.club(*correlated(r, n=20000))
        assert v == pytest.approx(2 * r**2 / (1 - r**2), rel=0.05, abs=0.01)


def test_club_is_near_zero_for_independent_variables() -> None:
    assert abs(E.club(*correlated(0.0), folds=2)) < 0.01


def test_club_mlp_increases_with_correlation() -> None:
    est = [E.club(*correlated(r, n=400), method="mlp", epochs=80, lr=1e-2, folds=1) for r in (0.2, 0.6, 0.9)]
    assert est[0] < est[1] < est[2], est
    assert est[2] >= true_mi(0.9)


def test_club_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError):
        E.club(np.zeros((10, 2)), np.zeros((9, 2)))


# ------------------------------------------------------------------------ representation JSD


def unit_rows(n: int, d: int, seed: int, dims=None) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((n, d))
    if dims is not None:
        z[:, [i for i in range(d) if i not in dims]] = 0.0
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_jsd_is_zero_on_identical_sets_and_symmetric() -> None:
    a, b = unit_rows(100, 6, 0), unit_rows(80, 6, 1, dims=(0, 1, 2))
    assert E.representation_jsd(a, a) == pytest.approx(0.0, abs=1e-10)
    assert E.representation_jsd(a, b) == pytest.approx(E.representation_jsd(b, a), abs=1e-12)
    assert E.representation_jsd(a, b) > 0.05


def test_jsd_reaches_log2_on_orthogonal_supports_and_never_exceeds_it() -> None:
    a, b = unit_rows(50, 6, 0, dims=(0, 1, 2)), unit_rows(50, 6, 1, dims=(3, 4, 5))
    assert E.representation_jsd(a, b) == pytest.approx(math.log(2), abs=1e-9)
    for s in range(5):
        assert 0.0 <= E.representation_jsd(unit_rows(40, 4, s), unit_rows(30, 4, s + 10, dims=(0,))) <= math.log(2)


def test_jsd_of_an_equal_size_mixture() -> None:
    a, b = unit_rows(60, 5, 2, dims=(0, 1, 2)), unit_rows(60, 5, 3, dims=(2, 3, 4))
    union = np.concatenate([a, b])
    rho_a, rho_b = E.density_matrix(a), E.density_matrix(b)
    # the union's density matrix is the midpoint, so the JSD is S(union) - (S(a) + S(b)) / 2
    assert torch.allclose(E.density_matrix(union), 0.5 * (rho_a + rho_b))
    s = E.von_neumann_entropy
    expected = s(E.density_matrix(union)) - 0.5 * (s(rho_a) + s(rho_b))
    assert E.representation_jsd(a, b) == pytest.approx(expected, abs=1e-12)
    # joint convexity: a set is at most half as far from its mixture with b as from b
    assert E.representation_jsd(a, union) <= 0.5 * E.representation_jsd(a, b) + 1e-12
    assert E.representation_jsd(a, union) > 0


# ------------------------------------------------------------------------------- EMI, EMID


def test_emi_is_zero_when_the_responses_are_the_references() -> None:
    x, y = correlated(0.8, n=1000, d=3)
    assert E.emi(x, y, y).emi == pytest.approx(0.0, abs=1e-12)
    noisy = y + 1e-4 * np.random.default_rng(1).standard_normal(y.shape)
    assert E.emi(x, noisy, y, folds=2).emi == pytest.approx(0.0, abs=1e-2)


def test_emi_is_negative_for_uninformative_responses_and_emid_positive() -> None:
    x, y = correlated(0.8, n=1000, d=3)
    junk = np.random.default_rng(5).standard_normal(y.shape)
    half = y.copy()
    half[::2] = junk[::2]
    good, mid, bad = (E.emi(x, r, y, folds=2) for r in (y, half, junk))
    assert bad.emi < mid.emi < good.emi <= 0.0 + 1e-12
    assert bad.emi == pytest.approx(-bad.mi_reference, abs=0.05)
    assert E.emid(good, bad) > 0 and E.emid(good, bad) == pytest.approx(good.emi - bad.emi)


def test_emi_with_a_shared_estimator() -> None:
    x, y = correlated(0.8, n=1000, d=3)
    q = E.fit_linear_gaussian(x, y)
    assert E.emi(x, y, y, q=q).emi == 0.0
    assert E.emi(x, y[::-1].copy(), y, q=q).emi < -1.0


def test_emid_bound_terms_and_forms() -> None:
    p = [unit_rows(50, 4, s) for s in range(4)]
    same = E.emid_bound(*p, *p)
    assert same["jsd_v"] == pytest.approx(0.0, abs=1e-10) and same["jsd_t"] == pytest.approx(0.0, abs=1e-10)
    q = [unit_rows(50, 4, 10 + s, dims=(0, 1)) for s in range(4)]
    b = E.emid_bound(*p, *q)
    assert b["bound"] == pytest.approx(b["input_part"] + b["output_part"])
    assert b["input_part"] == pytest.approx(math.sqrt(b["jsd_v"]) + math.sqrt(b["jsd_t"]))
    assert b["output_part"] == pytest.approx(b["jsd_p_out"] ** 0.25 + b["jsd_q_out"] ** 0.25)
    t = E.emid_bound(*p, *q, form="theoretical", entropy_scale=2.0)
    assert t["bound"] == pytest.approx(2.0 * b["input_part"] + 4.0 * b["output_part"])
    with pytest.raises(ValueError):
        E.emid_bound(*p, *q, form="theoretical")


def test_discrete_mi_is_blind_to_relabelling() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 500)
    assert E.discrete_mi(a, a) == pytest.approx(math.log(5), abs=0.02)
    perm = np.array([3, 0, 4, 1, 2])
    assert E.discrete_mi(a, perm[a]) == pytest.approx(E.discrete_mi(a, a), abs=1e-12)
    assert E.discrete_mi(a, rng.integers(0, 5, 500)) < 0.05
