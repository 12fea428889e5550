"""Leave-out retraining ground truth: single pairs and sets, warm and cold starts, the
leave-one-out table and the leave-one-out experiment of the ``loo`` stage."""

import numpy as np
import pytest
import torch

from ecif.core.evaluate import validation_loss
from ecif.core.fit import fit
from ecif.experiments.metrics import loo_agreement
from ecif.experiments.retraining import (
    LOO_COLUMNS,
    loo_experiment,
    loo_metrics,
    loo_val_changes,
    retrain,
    sample_loo_pairs,
)


def test_loo_agrees_with_ecif(tp):
    mask = tp.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:4], np.flatnonzero(~mask)[:6]]
    loo = loo_val_changes(tp.obj, tp.theta, tp.val_obj, idx, preconditioner=tp.engine.solver)
    assert tuple(loo.columns) == LOO_COLUMNS
    assert list(loo["pair"]) == list(idx) and loo.converged.all() and (loo.grad_norm <= 1e-9).all()
    assert (loo.iterations >= 1).all() and (loo.seconds > 0).all()
    IS = tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    agree = loo_agreement(IS[idx], loo.actual)
    assert agree["pearson"] > 0.95 and agree["spearman"] > 0.9
    # removing a misaligned pair lowers the validation loss (on average)
    assert loo.actual[: 4].mean() < 0 < loo.actual[4:].mean() + 0.01


def test_retrain_init_and_errors(tp):
    rm = np.flatnonzero(tp.data.misaligned)
    warm = retrain(tp.obj, tp.theta, rm, preconditioner=tp.engine.solver)
    cold = retrain(tp.obj, tp.theta, rm, init="theta0")
    assert warm.converged and cold.converged
    assert float((warm.theta - cold.theta).norm()) < 1e-6  # same optimum here (lam = 0.2)
    with pytest.raises(ValueError, match="init"):
        retrain(tp.obj, tp.theta, rm, init="zero")
    with pytest.raises(ValueError, match="empty"):
        loo_val_changes(tp.obj, tp.theta, tp.val_obj, [])


def test_retrain_is_the_warm_started_fit_of_the_reduced_objective(tp):
    """``retrain`` is exactly ``fit(L_{-R})`` from ``theta_hat``: preconditioned or not, with the
    fallback ``method`` and ``max_iter`` passed through, and a boolean mask equals its indices."""
    rm = [3, 50]
    mask = np.zeros(tp.obj.n, dtype=bool)
    mask[rm] = True
    a = retrain(tp.obj, tp.theta, rm, preconditioner=tp.engine.solver)
    b = fit(tp.obj.without(rm), theta_init=tp.theta, max_iter=200, method="auto", preconditioner=tp.engine.solver)
    assert torch.equal(a.theta, b.theta) and a.method == "newton-cg"  # auto + preconditioner
    c = retrain(tp.obj, tp.theta, mask, max_iter=100, method="newton-cg")
    d = fit(tp.obj.without(rm), theta_init=tp.theta, max_iter=100, method="newton-cg")
    assert torch.equal(c.theta, d.theta) and c.method == "newton-cg"
    assert a.converged and c.converged and float((a.theta - c.theta).norm()) < 1e-8  # same optimum
    assert float(tp.obj.without(rm).gradient(a.theta).norm()) <= 1e-9


def test_sample_loo_pairs():
    mask = np.zeros(50, dtype=bool)
    mask[[2, 7, 11]] = True
    idx = sample_loo_pairs(mask, 10, 2, seed=0)
    assert len(idx) == 10 and mask[idx].sum() == 2 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, sample_loo_pairs(mask, 10, 2, seed=0))  # seeded
    # counts are capped by what the split holds
    capped = sample_loo_pairs(mask, 60, 5, seed=1)
    assert len(capped) == 50 and mask[capped].sum() == 3


def test_loo_experiment(tp):
    mask = np.asarray(tp.data.misaligned, dtype=bool)
    pairs = sample_loo_pairs(mask, 5, 2, seed=0)
    table, info = loo_experiment(tp.obj, tp.val_obj, tp.theta, pairs, mask=mask)
    assert list(table.columns) == ["pair", "misaligned", *LOO_COLUMNS[1:], "positive", "negative", "ecif", "newton"]
    np.testing.assert_array_equal(table["pair"], pairs)
    np.testing.assert_array_equal(table["misaligned"], mask[pairs])
    assert table.converged.all() and (table.grad_norm <= 1e-9).all()
    # the predictions are the engine's influence scores, the truth is the LOO table's
    IS = tp.engine.influence_scores(tp.val_grad)
    for v in ("positive", "negative", "ecif", "newton"):
        np.testing.assert_allclose(table[v], IS[v].numpy()[pairs], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(info["scores"][v], IS[v].numpy(), rtol=1e-9, atol=1e-15)
    k = int(pairs[0])
    refit = retrain(tp.obj, tp.theta, [k], preconditioner=tp.engine.solver)
    actual = validation_loss(tp.val_obj, refit.theta) - validation_loss(tp.val_obj, tp.theta)
    assert table["actual"].iloc[0] == pytest.approx(actual, rel=1e-6, abs=1e-12)
    assert info["val_loss"] == validation_loss(tp.val_obj, tp.theta)
    assert info["ecif_all_pairs_s"] > 0 and info["retrain_one_s"] > 0
    assert info["retrain_total_s"] == pytest.approx(table["seconds"].sum())
    assert info["solver"]["solver"] == "dense" and info["solver"]["damping"] == 0.0
    stats = loo_metrics(table)
    assert set(stats) == {"positive", "negative", "ecif", "newton"}
    assert stats["ecif"]["pearson"] > 0.9
    assert stats["ecif"]["spearman"] == pytest.approx(loo_agreement(table["ecif"], table["actual"])["spearman"])
    # without a mask nothing is marked misaligned
    t2, _ = loo_experiment(tp.obj, tp.val_obj, tp.theta, pairs[:1])
    assert not t2["misaligned"].any()
