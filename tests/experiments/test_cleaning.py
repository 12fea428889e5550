"""Data cleaning: top fractions of a detection score, and the cleaning table (retraining)."""

import numpy as np
import pytest

from ecif.experiments.cleaning import cleaning_table, top_fraction


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
