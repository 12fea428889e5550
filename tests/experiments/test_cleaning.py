"""Data cleaning: top fractions of a detection score, and the cleaning table (retraining)."""

import numpy as np
import pandas as pd
import pytest

from ecif.experiments.cleaning import (cleaning_curve, cleaning_runs, cleaning_table, oracle_removal, separation,
                                       table_separation, top_fraction)


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


def _fit(tp, test_set, mask):
    """One entry of cleaning_runs' ``fits``: the tiny problem, with ``mask`` as its injected pairs."""
    from types import SimpleNamespace

    problem = SimpleNamespace(objective=tp.obj, mask=mask, test_set=test_set, clean_objective=lambda: tp.obj)
    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    return problem, tp.theta, tp.engine, {"ecif": harm}


def test_cleaning_runs_oracle_removes_exactly_each_fits_injected_pairs(tp, test_set):
    """Two fits (noise seeds 3 and 7) with different injected sets: per fit the oracle row removes
    all of that fit's injected pairs and nothing else, and its accuracy is that of retraining
    without exactly them; every row carries its noise seed, the curve too."""
    from ecif.experiments.retraining import retrain

    full = np.asarray(tp.data.misaligned, dtype=bool)
    half = full.copy()
    half[np.flatnonzero(full)[::2]] = False  # another "noise seed": half of the injected pairs
    t, c = cleaning_runs({3: _fit(tp, test_set, full), 7: _fit(tp, test_set, half)}, fraction=0.1,
                         fractions=(0.05, 0.2), random_seeds=(0, 1))
    assert list(t.columns[:2]) == ["noise_seed", "method"] and list(c.columns[:3]) == ["noise_seed", "fraction", "method"]
    assert t.groupby("noise_seed").method.apply(list).to_dict() == {
        s: ["none", "ecif", "random", "random", "oracle", "clean"] for s in (3, 7)}
    for seed, mask in ((3, full), (7, half)):
        oracle = t[(t.noise_seed == seed) & (t.method == "oracle")].iloc[0]
        assert oracle.n_removed == oracle.n_misaligned_removed == mask.sum()
        again = retrain(tp.obj, tp.theta, np.flatnonzero(mask), preconditioner=tp.engine.solver)
        assert oracle.accuracy == pytest.approx(test_set.accuracy(tp.param, again.theta))
    assert t[(t.noise_seed == 3) & (t.method == "oracle")].n_removed.item() != \
        t[(t.noise_seed == 7) & (t.method == "oracle")].n_removed.item()
    assert set(c.noise_seed) == {3, 7} and len(c[c.method == "none"]) == 2 * 2  # per seed, per fraction
    with pytest.raises(ValueError, match="at least one fit"):
        cleaning_runs({})


def test_pooled_spread_decides_the_verdict():
    """table_separation over several noise seeds pools the random deletions of all of them: the
    same gap separates when the random accuracies agree across seeds and does not when they
    differ between seeds (the seed-to-seed spread), and the verdict follows gap > 2 std."""
    def runs(randoms):
        rows = [{"noise_seed": s, "method": m, "accuracy": a} for s in (0, 1)
                for m, a in (("none", 0.40), ("oracle", 0.46))]
        rows += [{"noise_seed": s, "method": "random", "accuracy": a} for s, accs in randoms.items() for a in accs]
        return pd.DataFrame(rows)

    tight = table_separation(runs({0: [0.41, 0.42], 1: [0.41, 0.42]}))
    spread = table_separation(runs({0: [0.36, 0.37], 1: [0.45, 0.46]}))
    assert tight["gap"] == spread["gap"] == pytest.approx(0.06)
    assert tight["random_std"] == pytest.approx(np.std([0.41, 0.42, 0.41, 0.42], ddof=1))
    assert tight["separable"] and "can separate" in tight["statement"]
    assert spread["random_std"] == pytest.approx(np.std([0.36, 0.37, 0.45, 0.46], ddof=1))
    assert not spread["separable"] and "within noise" in spread["statement"]


@pytest.mark.slow
def test_cleaning_refits_on_a_two_worker_local_cluster_equal_the_serial_ones(tp, test_set):
    from ecif.experiments import distributed

    harm = -tp.engine.influence_scores(tp.val_grad, variants=("ecif",))["ecif"].numpy()
    kw = dict(fraction=0.1, mask=tp.data.misaligned, random_seeds=(0, 1), preconditioner=tp.engine.solver)
    serial = cleaning_table(tp.obj, tp.theta, {"ecif": harm}, test_set, **kw)
    client = distributed.connect("local:2")
    try:
        spread = cleaning_table(tp.obj, tp.theta, {"ecif": harm}, test_set, client=client, **kw)
    finally:
        distributed.close(client)
    cols = [c for c in serial.columns if c != "seconds"]
    pd.testing.assert_frame_equal(serial[cols], spread[cols], check_exact=True)
    assert list(spread.method) == ["none", "ecif", "random", "random", "oracle"]
