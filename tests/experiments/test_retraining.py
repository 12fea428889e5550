"""Leave-out retraining ground truth, cleaning and the edited model against retraining."""

import numpy as np
import pytest

from ecif.experiments.cleaning import cleaning_table, top_fraction
from ecif.experiments.editing import edit_vs_retrain, removal_sets
from ecif.experiments.metrics import loo_agreement
from ecif.experiments.retraining import loo_val_changes, retrain


def test_loo_agrees_with_ecif(tp):
    mask = tp.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:4], np.flatnonzero(~mask)[:6]]
    loo = loo_val_changes(tp.obj, tp.theta, tp.val_obj, idx, preconditioner=tp.engine.solver)
    assert list(loo["index"]) == list(idx) and loo.converged.all() and (loo.grad_norm <= 1e-9).all()
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


def test_top_fraction():
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.0, 0.5, 0.2, 0.3, 0.4, 0.6])
    np.testing.assert_array_equal(top_fraction(s, 0.3), [3, 9, 1])  # tie 1/2/5 -> lowest index
    np.testing.assert_array_equal(top_fraction(s, 0.5), [3, 9, 1, 2, 5])
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(s, 1.5)
    with pytest.raises(ValueError, match="removes nothing"):
        top_fraction(s, 0.01)


def test_cleaning_table(tp, test_set):
    mask = tp.data.misaligned
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    t = cleaning_table(tp.obj, tp.theta, {"ecif": harm}, test_set, fraction=0.1, mask=mask, random_seeds=(0,),
                       preconditioner=tp.engine.solver)
    assert list(t.method) == ["none", "ecif", "random"]
    assert list(t.n_removed) == [0, 20, 20] and t.converged.all()
    assert t.accuracy.iloc[0] == pytest.approx(test_set.accuracy(tp.param, tp.theta))
    ecif_row, rand_row = t.iloc[1], t.iloc[2]
    assert ecif_row.n_misaligned_removed == mask[top_fraction(harm, 0.1)].sum() > rand_row.n_misaligned_removed
    with pytest.raises(ValueError, match="mask"):
        cleaning_table(tp.obj, tp.theta, {}, test_set, mask=mask[:-1])


def test_edit_vs_retrain(tp, test_set):
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    sets = removal_sets(harm, 15, seed=0)
    assert not set(sets["harmful"]) & set(sets["valuable"])
    assert len(set(sets["random"])) == 15
    both = edit_vs_retrain(tp.engine, sets, tp.val_obj, test_set, variants=("ecif", "newton"),
                           preconditioner=tp.engine.solver)
    assert len(both) == 6 and set(both.variant) == {"ecif", "newton"}
    t = both[both.variant == "ecif"].set_index("set")
    nt = both[both.variant == "newton"].set_index("set")
    assert t.retrain_converged.all()
    # one retraining per set, shared by the variants
    np.testing.assert_array_equal(t.actual_val_change, nt.actual_val_change)
    # the edit moves towards the retrained parameters: closer to them than theta_hat is
    # (not editing has shift_rel_error exactly 1); here it is 0.3-0.6 for 15 of 200 pairs
    assert (t.shift_rel_error < 0.8).all() and (nt.shift_rel_error < 0.8).all()
    # direction of the validation-loss change is predicted, and its size roughly
    assert t.loc["harmful", "predicted_val_change"] < 0 < t.loc["valuable", "predicted_val_change"]
    assert t.loc["harmful", "actual_val_change"] < 0 < t.loc["valuable", "actual_val_change"]
    np.testing.assert_allclose(t.edited_val_change, t.actual_val_change, rtol=0.5, atol=0.02)
    with pytest.raises(ValueError, match="size"):
        removal_sets(harm, 0)
