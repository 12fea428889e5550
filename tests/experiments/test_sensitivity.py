"""Damping, regularisation and batch-size sweeps on a small problem."""

import numpy as np
import pytest
from tiny_problem import tiny_problem

from ecif.experiments.baselines import tracin_scores
from ecif.core.influence import ECIF
from ecif.experiments.retraining import loo_val_changes
from ecif.experiments.sensitivity import batch_size_sweep, damping_sweep, lam_sweep
from ecif.core.solvers import DenseSolver


@pytest.fixture(scope="module")
def tp():
    return tiny_problem()  # shared with the other test files (cached)


@pytest.fixture(scope="module")
def sp():
    return tiny_problem(n=120, batch_size=40, seed=1)


def test_damping_sweep(tp):
    sp = tp
    mask = sp.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:3], np.flatnonzero(~mask)[:5]]
    loo = loo_val_changes(sp.obj, sp.theta, sp.val_obj, idx, preconditioner=sp.engine.solver)
    t = damping_sweep(sp.obj, sp.theta, sp.val_grad, [0.0, 0.1, 1e12], loo, mask)
    assert len(t) == 12 and set(t.variant) == {"positive", "negative", "ecif", "newton"}
    assert np.allclose(t.min_eigenvalue, sp.engine.solver.report["min_eigenvalue"])
    und = t[(t.damping == 0) & (t.variant == "ecif")].iloc[0]
    assert und.spearman > 0.9 and und.pearson > 0.7
    # huge damping: IS -> grad^T g / (n mu), i.e. TracIn up to scale; same ranking, same AUROC
    from ecif.experiments.metrics import auroc

    huge = t[(t.damping == 1e12) & (t.variant == "ecif")].iloc[0]
    assert huge.auroc == pytest.approx(auroc(tracin_scores(sp.obj, sp.theta, sp.val_grad), mask), abs=1e-9)
    eng = ECIF(sp.obj, sp.theta, solver=DenseSolver(sp.obj.hessian(sp.theta), 1e12))
    IS = eng.influence_scores(sp.val_grad, variants=("ecif",))["ecif"].numpy()
    tr = tracin_scores(sp.obj, sp.theta, sp.val_grad)
    np.testing.assert_allclose(1e12 * IS, -tr, rtol=1e-5, atol=1e-6 * np.abs(tr).max())


@pytest.mark.slow
def test_lam_and_batch_size_sweeps(sp):
    mask = sp.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:1], np.flatnonzero(~mask)[:2]]
    t = lam_sweep(sp.obj, [0.5, 0.2], sp.val_obj, idx, mask, variants=("ecif",))
    assert list(t.lam) == [0.5, 0.2] and t.fit_converged.all() and t.loo_converged.all()
    # more regularisation: a better conditioned Hessian
    assert t.min_eigenvalue.iloc[0] > t.min_eigenvalue.iloc[1] > 0
    assert t.spearman.notna().all()
    b = batch_size_sweep(sp.param, sp.data.x, sp.data.y, [None, 40], 0.2, sp.val_obj, None, mask,
                         seed=1, variants=("ecif", "positive"))
    assert list(b.batch_size) == [120, 120, 40, 40] and b.fit_converged.all()
    assert b.pearson.isna().all() and (b.auroc > 0.6).all()
    # change across the protocol: the first batch size is the reference of itself
    first = b[b.batch_size == 120]
    assert np.allclose(first.is_spearman_vs_first, 1.0) and b.loo_spearman_vs_first.isna().all()
    other = b[b.batch_size == 40]
    assert (other.is_spearman_vs_first < 1.0).all() and (other.is_spearman_vs_first > 0.5).all()
    assert (b.neg_to_pos > 0).all() and b.neg_to_pos.iloc[0] != b.neg_to_pos.iloc[2]
    with pytest.raises(ValueError, match="non-empty list"):
        batch_size_sweep(sp.param, sp.data.x, sp.data.y, [], 0.2, sp.val_obj)
    # the batch-40 row reproduces the fixture's engine (same protocol seed)
    assert b.min_eigenvalue.iloc[2] == pytest.approx(sp.engine.solver.report["min_eigenvalue"], rel=1e-6)
