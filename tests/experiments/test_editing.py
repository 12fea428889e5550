"""The ECIF-edited model against retraining, and the removal sets."""

import numpy as np
import pytest

from ecif.experiments.editing import edit_vs_retrain, removal_sets


def test_edit_vs_retrain(tp, test_set):
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    sets = removal_sets(harm, 15, seeds=(0, 1))
    assert not set(sets["harmful"]) & set(sets["valuable"])
    assert list(sets) == ["harmful", "valuable", "random_0", "random_1"]
    assert len(set(sets["random_0"])) == 15 and set(sets["random_0"]) != set(sets["random_1"])
    assert set(sets["harmful"]) == set(np.argsort(-harm, kind="stable")[:15])
    both = edit_vs_retrain(tp.engine, sets, tp.val_obj, test_set, variants=("ecif", "newton"),
                           preconditioner=tp.engine.solver)
    assert len(both) == 8 and set(both.variant) == {"ecif", "newton"}
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


def test_edit_vs_retrain_cold(tp, test_set):
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    sets = removal_sets(harm, 15, seeds=(0,))
    t = edit_vs_retrain(tp.engine, sets, tp.val_obj, test_set, preconditioner=tp.engine.solver, cold=True)
    for c in ("acc_cold_retrained", "cold_warm_distance", "cold_retrain_grad_norm", "cold_retrain_converged",
              "cold_retrain_s"):
        assert c in t.columns, c
    assert t.cold_retrain_converged.all() and (t.cold_retrain_s > 0).all()
    # lam > 0, convex enough here: the cold fit from theta0 reaches the warm optimum
    assert (t.cold_warm_distance < 1e-5).all()
    np.testing.assert_allclose(t.acc_cold_retrained, t.acc_retrained)
    warm_only = edit_vs_retrain(tp.engine, {"harmful": sets["harmful"]}, tp.val_obj, test_set,
                                preconditioner=tp.engine.solver)
    assert not [c for c in warm_only.columns if c.startswith("cold") or "cold" in c]
