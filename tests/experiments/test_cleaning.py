"""Data cleaning: top fractions of a detection score, and the cleaning table (retraining)."""

import numpy as np
import pandas as pd
import pytest

from ecif.experiments.cleaning import (cleaning_curve, cleaning_table, oracle_removal, separation, table_separation,
                                       top_fraction)


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
    assert list(t.method) == ["none", "ecif", "random", "oracle"]  # oracle: the mask's pairs removed
    assert list(t.n_removed) == [0, 20, 20, mask.sum()] and t.converged.all()
    assert t.accuracy.iloc[0] == pytest.approx(test_set.accuracy(tp.param, tp.theta))
    ecif_row, rand_row = t.iloc[1], t.iloc[2]
    assert ecif_row.n_misaligned_removed == mask[top_fraction(harm, 0.1)].sum() > rand_row.n_misaligned_removed
    with pytest.raises(ValueError, match="mask"):
        cleaning_table(tp.obj, tp.theta, {}, test_set, mask=mask[:-1])


def test_oracle_removal_takes_injected_pairs_only():
    mask = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    np.testing.assert_array_equal(oracle_removal(mask), [1, 3, 4, 7])
    np.testing.assert_array_equal(oracle_removal(mask, 2), [1, 3])  # the first k injected pairs
    np.testing.assert_array_equal(oracle_removal(mask, 10), [1, 3, 4, 7])  # never a clean pair
    assert oracle_removal(np.zeros(4, dtype=bool), 3).size == 0


def test_separation_on_hand_made_numbers():
    # gap 0.05, random std of [0.80, 0.81, 0.82] = 0.01: 0.05 > 2 * 0.01 -> separable
    s = separation(0.80, 0.85, [0.80, 0.81, 0.82])
    assert s["gap"] == pytest.approx(0.05) and s["random_std"] == pytest.approx(0.01)
    assert s["separable"] and s["statement"].startswith("the experiment can separate methods")
    # gap 0.015 within 2 std = 0.02 -> not ranked
    s = separation(0.80, 0.815, [0.80, 0.81, 0.82])
    assert not s["separable"] and s["statement"].startswith("gap within noise: methods are not ranked")
    # the threshold is a parameter; a gap of zero or below never separates, even with no spread
    assert separation(0.80, 0.815, [0.80, 0.81, 0.82], n_std=1.0)["separable"]
    assert not separation(0.80, 0.80, [0.8, 0.8])["separable"]
    assert not separation(0.80, 0.79, [0.8, 0.8])["separable"]
    # one random seed: no spread to compare with, so no ranking
    s = separation(0.5, 0.9, [0.5])
    assert np.isnan(s["random_std"]) and not s["separable"] and "fewer than two" in s["statement"]


def test_table_separation_reads_the_table():
    t = pd.DataFrame({"method": ["none", "ecif", "random", "random", "oracle"],
                      "accuracy": [0.80, 0.83, 0.80, 0.82, 0.90]})
    s = table_separation(t)
    assert s["gap"] == pytest.approx(0.10) and s["random_std"] == pytest.approx(np.std([0.8, 0.82], ddof=1))
    assert s["separable"]
    assert not table_separation(t[t.method != "oracle"])["separable"]  # no oracle row: never ranked


def test_cleaning_table_reference_rows(tp, test_set):
    mask = tp.data.misaligned
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    t = cleaning_table(tp.obj, tp.theta, {"ecif": harm}, test_set, fraction=0.1, mask=mask, random_seeds=(0, 1),
                       preconditioner=tp.engine.solver, clean_objective=tp.obj)
    assert list(t.method) == ["none", "ecif", "random", "random", "oracle", "clean"]
    oracle, clean = t.iloc[4], t.iloc[5]
    assert oracle.n_removed == oracle.n_misaligned_removed == mask.sum() and oracle.converged
    # the "clean" objective here is the training objective itself: its fit from theta_hat stays there
    assert clean.n_removed == 0 and clean.converged and clean.accuracy == pytest.approx(t.accuracy.iloc[0])
    no_mask = cleaning_table(tp.obj, tp.theta, {}, test_set, fraction=0.1, random_seeds=(0,))
    assert list(no_mask.method) == ["none", "random"]  # no oracle without ground truth


def test_cleaning_curve(tp, test_set):
    mask = tp.data.misaligned
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    c = cleaning_curve(tp.obj, tp.theta, {"ecif": harm}, test_set, fractions=(0.05, 0.2), mask=mask,
                       random_seeds=(0, 1), preconditioner=tp.engine.solver)
    assert list(c.columns[:2]) == ["fraction", "method"]
    assert list(c[c.fraction == 0.05].method) == ["none", "ecif", "random", "random", "oracle"]
    k = {0.05: 10, 0.2: 40}
    for f, grp in c.groupby("fraction"):
        rows = grp.set_index("method")
        assert rows.loc["ecif", "n_removed"] == k[f] and (grp[grp.method == "random"].n_removed == k[f]).all()
        # the oracle removes min(k, n_injected) pairs, all injected
        assert rows.loc["oracle", "n_removed"] == rows.loc["oracle", "n_misaligned_removed"] == min(k[f], mask.sum())
    assert c[c.method == "none"].accuracy.nunique() == 1  # evaluated once, repeated per fraction
    with pytest.raises(ValueError, match="fraction"):
        cleaning_curve(tp.obj, tp.theta, {}, test_set, fractions=(0.1, 1.0))
