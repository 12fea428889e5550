"""The run's problem from saved features: build, save and reload a fit, its influence engine."""

import numpy as np
import pytest
import torch

from ecif.core.fit import fit
from ecif.core.influence import ECIF
from ecif.data.features import save_features
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments.zeroshot import ZeroShotSet
from ecif.kit.problem import FitSettings, Fitted, build_problem, load_fit, save_fit


def _features(folder, labels: bool = True):
    d = synthetic_pairs(60, n_val=40, d_img=5, d_txt=5, width=4, shuffle_rate=0.2, seed=3)
    t = synthetic_pairs(30, n_val=2, d_img=5, d_txt=5, width=4, shuffle_rate=0.0, seed=4)
    feats = {"x_train": d.x.astype(np.float32), "y_train": d.y.astype(np.float32), "noise_mask": d.misaligned,
             "x_val": d.x_val, "y_val": d.y_val, "x_test": t.x.astype(np.float32),
             "W_img": d.w_img0, "W_txt": d.w_txt0, "log_logit_scale": np.asarray(d.log_scale0), "meta": {}}
    if labels:
        feats.update(labels_test=t.labels.astype(np.int64), class_text=d.class_text)
    save_features(folder, feats)
    return d, t


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    d, t = _features(folder)
    settings = FitSettings(rank=2, lam=0.3, batch_size=16, seed=1, n_train=50)
    problem = build_problem(folder, **settings.problem_kwargs())
    res = fit(problem.objective, gtol=1e-10)
    assert res.converged
    return folder, d, t, problem, res


def test_build_problem(saved):
    folder, d, t, problem, _ = saved
    assert problem.n == 50 and problem.objective.lam == 0.3 and problem.val.lam == 0.0
    np.testing.assert_array_equal(problem.mask, d.misaligned[:50])
    assert problem.param.n_params == 2 * (5 + 5 + 2 * 4) + 1
    assert problem.config == {"features_dir": str(folder), "rank": 2, "lam": 0.3, "batch_size": 16, "seed": 1,
                              "n_train": 50}
    # the zero-shot test set: float64 features of the test split and its labels
    test = problem.test_set
    assert isinstance(test, ZeroShotSet) and len(test) == 30 and test.x.dtype == torch.float64
    np.testing.assert_array_equal(test.labels, t.labels)
    ref = ZeroShotSet(t.x.astype(np.float32), d.class_text, t.labels)
    theta0 = problem.param.theta0
    assert test.accuracy(problem.param, theta0) == ref.accuracy(problem.param, theta0)


def test_no_test_set_without_labels(tmp_path):
    _features(tmp_path, labels=False)
    assert build_problem(tmp_path, rank=1, lam=0.1, batch_size=None, seed=0).test_set is None


def test_save_and_load_fit(saved, tmp_path):
    folder, _, _, problem, res = saved
    hessian = problem.objective.hessian(res.theta)
    save_fit(tmp_path / "fit", problem, res.theta, res.summary(), hessian=hessian)
    back = load_fit(tmp_path / "fit")
    assert torch.equal(back.theta_hat, res.theta) and torch.equal(back.hessian, hessian)
    assert back.report == res.summary() and back.problem.config == problem.config
    saved_batches, batches = back.problem.batching.batches(), problem.batching.batches()
    assert len(saved_batches) == len(batches) and all(np.array_equal(a, b) for a, b in zip(saved_batches, batches))
    assert float(back.problem.objective.loss(back.theta_hat)) == float(problem.objective.loss(res.theta))
    # without the Hessian the fit still loads; its engine computes the Hessian
    save_fit(tmp_path / "bare", problem, res.theta, res.summary())
    assert load_fit(tmp_path / "bare").hessian is None


def test_fitted_engine(saved):
    _, _, _, problem, res = saved
    hessian = problem.objective.hessian(res.theta)
    g = problem.val.gradient(res.theta)
    reference = ECIF(problem.objective, res.theta, solver="dense").influence_scores(g)
    for h in (hessian, None):
        engine = Fitted(problem, res.theta, {}, h).engine()
        assert engine.solver.report["damping"] == 0.0 and engine.objective is problem.objective
        for v, s in engine.influence_scores(g).items():
            torch.testing.assert_close(s, reference[v], rtol=1e-12, atol=1e-15)
    damped = Fitted(problem, res.theta, {}, hessian).engine(damping=0.5)
    assert damped.solver.report["damping"] == 0.5


def test_fit_settings():
    s = FitSettings()
    assert (s.rank, s.lam, s.batch_size, s.seed, s.gtol, s.max_iter, s.method, s.n_train) == (
        1, 0.1, 64, 0, 1e-9, 100, "newton-cg", None)
    assert FitSettings(rank=3).problem_kwargs() == {"rank": 3, "lam": 0.1, "batch_size": 64, "seed": 0,
                                                    "n_train": None}
