"""Misprediction trace-back: culprit scores against the engine, gallery, counterfactual removal."""

import numpy as np
import pytest

from ecif.experiments.misprediction import counterfactual_traceback, culprit_scores, select_items, trace_gallery


def test_culprit_scores_match_engine(tp, test_set):
    z = int(test_set.mispredicted(tp.param, tp.theta)[0])
    g = test_set.item_gradients(tp.param, tp.theta)[:, z]
    s = culprit_scores(tp.engine, g, chunk=64)
    np.testing.assert_allclose(s["is"], -tp.engine.influence_scores(g, variants=("ecif",))["ecif"].numpy(),
                               rtol=1e-10)
    idx = np.arange(0, tp.obj.n, 11)
    np.testing.assert_allclose(s["ris"][idx], -tp.engine.relative_influence(g, idx).numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="item_gradient"):
        culprit_scores(tp.engine, g[:-1])


def test_gallery_and_counterfactual(tp, test_set):
    mask = tp.data.misaligned
    wrong = test_set.mispredicted(tp.param, tp.theta)[:2]
    gal = trace_gallery(tp.engine, test_set, wrong, top=3, mask=mask)
    assert len(gal) == 6 and set(gal["rank"]) == {0, 1, 2}
    assert (gal.groupby("item").score.apply(lambda s: (np.diff(s.to_numpy()) <= 0).all())).all()
    cf = counterfactual_traceback(tp.engine, test_set, wrong[:1], ks=(8,), n_random=2, mask=mask,
                                  preconditioner=tp.engine.solver)
    assert list(cf.method) == ["ris", "is", "random", "random"] and cf.converged.all()
    delta = (cf.margin_after - cf.margin_before).to_numpy()
    # removing the traced culprits raises the item's margin, more than random removals do
    assert delta[0] > 0 and delta[1] > 0 and delta[1] > delta[2:].max()
    with pytest.raises(ValueError, match="k must"):
        counterfactual_traceback(tp.engine, test_set, wrong[:1], ks=(0,))
    with pytest.raises(ValueError, match="out of range"):
        trace_gallery(tp.engine, test_set, [10_000])


def test_select_items_orders_the_mispredicted_items():
    """least_confident: margins closest to 0 first; most_confident: lowest first; never a correct
    item (margin >= 0); at most n_items; an unknown order is an error."""
    from types import SimpleNamespace

    margins = np.array([0.5, -3.0, -0.1, 0.0, -0.7, -3.0, 2.0, -0.05])
    ev = SimpleNamespace(margins=lambda param, theta: margins)
    assert list(select_items(ev, None, None, 3)) == [7, 2, 4]
    assert list(select_items(ev, None, None, 10, "least_confident")) == [7, 2, 4, 1, 5]
    assert list(select_items(ev, None, None, 3, "most_confident")) == [1, 5, 4]  # tie: lower index first
    with pytest.raises(ValueError, match="order"):
        select_items(ev, None, None, 3, "random")


def test_least_confident_items_are_the_mispredicted_of_smallest_loss(tp, test_set):
    """On the tiny problem: the selected items are mispredicted, and the least confident ones have
    margins at least as high as every other mispredicted item (the most confident: as low)."""
    margins = test_set.margins(tp.param, tp.theta)
    wrong = test_set.mispredicted(tp.param, tp.theta)
    if wrong.size < 2:
        pytest.skip("the tiny problem mispredicts fewer than two test items")
    least = select_items(test_set, tp.param, tp.theta, 2, "least_confident")
    most = select_items(test_set, tp.param, tp.theta, 2, "most_confident")
    assert (margins[least] < 0).all() and (margins[most] < 0).all()
    others = np.setdiff1d(wrong, least)
    assert others.size == 0 or margins[least].min() >= margins[others].max()
    np.testing.assert_array_equal(most, wrong[:2])  # mispredicted() lists the most confidently wrong first


def test_scorer_pays_the_per_pair_part_once():
    """A CulpritScorer on a CG engine (a 60-pair tiny problem): the same culprit scores as the
    dense engine's influence_scores and relative_influence, and after the first item every further
    item costs exactly one solve (the n per-pair solves of the shift norms are not repeated)."""
    from tiny_problem import tiny_problem

    from ecif.core.influence import ECIF
    from ecif.experiments.misprediction import CulpritScorer
    from ecif.experiments.zeroshot import ZeroShotSet

    tp = tiny_problem(n=60, batch_size=20)
    test_set = ZeroShotSet(tp.data.x_val, tp.data.class_text, tp.data.labels_val)
    cg = ECIF(tp.obj, tp.theta, solver="cg", materialise=False)
    scorer = CulpritScorer(cg, chunk=64)
    wrong = test_set.mispredicted(tp.param, tp.theta)[:2]
    grads = test_set.item_gradients(tp.param, tp.theta)
    first = scorer(grads[:, wrong[0]])
    solves = len(cg.solver.report["solves"])
    assert solves == tp.obj.n + 1  # one solve per pair (shift norms) and one for the item
    second = scorer(grads[:, wrong[1]])
    assert len(cg.solver.report["solves"]) == solves + 1
    for z, s in zip(wrong, (first, second)):
        g = grads[:, z]
        np.testing.assert_allclose(s["is"], -tp.engine.influence_scores(g, variants=("ecif",))["ecif"].numpy(),
                                   rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(s["ris"], -tp.engine.relative_influence(g).numpy(), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="scorer"):
        trace_gallery(tp.engine, test_set, wrong, scorer=scorer)  # a scorer of another engine
    with pytest.raises(ValueError, match="variant"):
        CulpritScorer(cg, "ris")
