"""The run's problem from saved features: build, save and reload a fit, its influence engine."""

import numpy as np
import pytest
import torch

from ecif.core.evaluate import validation_gradient
from ecif.core.fit import ConvergenceWarning, fit, offset_ratio
from ecif.core.influence import ECIF
from core_problems import pearson

from ecif.data.features import load_features, save_features
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments.retraining import loo_val_changes
from ecif.experiments.zeroshot import ZeroShotSet
from ecif.kit.files import read_json, write_json
from ecif.kit.problem import (FitSettings, Fitted, as_tensor, build_problem, centring_means, load_fit,
                              not_converged_message, save_fit)


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
                              "n_train": 50, "centre": False, "centre_split": None, "device": "cpu", "mode": "head"}
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


def _scores(fitted) -> dict:
    g = validation_gradient(fitted.problem.val, fitted.theta_hat)
    out = {f"is_{v}": s for v, s in fitted.engine().influence_scores(g).items()}
    out.update(theta=fitted.theta_hat, val_gradient=g)
    return {k: t.detach().cpu().numpy() for k, t in out.items()}


def _refit(folder, device):
    settings = FitSettings(rank=2, lam=0.3, batch_size=16, seed=1, n_train=50)
    problem = build_problem(folder, **settings.problem_kwargs(), device=device)
    res = fit(problem.objective, gtol=1e-10)
    assert res.converged
    return Fitted(problem, res.theta, res.summary(), problem.objective.hessian(res.theta))


def test_device_cpu_is_the_default_bit_for_bit(saved, tmp_path):
    """``device="cpu"`` named explicitly (build, fit, Hessian, scores) equals the default path;
    the device is recorded and ``load_fit`` reuses it unless told otherwise (issue 10.5)."""
    folder, _, _, problem, res = saved
    explicit = _refit(folder, "cpu")
    default = Fitted(problem, res.theta, res.summary(), problem.objective.hessian(res.theta))
    a, b = _scores(default), _scores(explicit)
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    assert explicit.problem.config["device"] == "cpu" and explicit.problem.objective.device == torch.device("cpu")
    save_fit(tmp_path / "fit", explicit.problem, explicit.theta_hat, explicit.report, hessian=explicit.hessian)
    for back in (load_fit(tmp_path / "fit"), load_fit(tmp_path / "fit", device="cpu")):
        assert back.theta_hat.device == back.hessian.device == back.problem.param.device == torch.device("cpu")
        c = _scores(back)
        for k in a:
            np.testing.assert_array_equal(c[k], a[k], err_msg=k)
    # fits saved before the device was recorded load on the CPU
    cfg = read_json(tmp_path / "fit" / "fit.json")
    del cfg["config"]["device"]
    write_json(tmp_path / "fit" / "fit.json", cfg)
    assert load_fit(tmp_path / "fit").problem.config["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_refused_without_a_gpu(saved):
    folder = saved[0]
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is false"):
        build_problem(folder, rank=1, lam=0.1, batch_size=None, seed=0, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_problem_matches_cpu(saved, tmp_path):
    folder = saved[0]
    cpu, gpu = _refit(folder, "cpu"), _refit(folder, "cuda")
    assert gpu.problem.config["device"] == "cuda" and gpu.theta_hat.device.type == "cuda"
    np.testing.assert_array_equal(gpu.problem.param.theta0.cpu().numpy(), cpu.problem.param.theta0.numpy())
    a, b = _scores(cpu), _scores(gpu)
    for k in a:
        assert np.abs(b[k] - a[k]).max() <= 1e-10 * max(np.abs(a[k]).max(), 1e-300), k
    # a fit made on the GPU reloads there, or on the CPU when told
    save_fit(tmp_path / "fit", gpu.problem, gpu.theta_hat, gpu.report, hessian=gpu.hessian)
    assert load_fit(tmp_path / "fit").theta_hat.device.type == "cuda"
    back = load_fit(tmp_path / "fit", device="cpu")
    assert back.theta_hat.device.type == "cpu"
    c = _scores(back)
    for k in a:
        assert np.abs(c[k] - a[k]).max() <= 1e-10 * max(np.abs(a[k]).max(), 1e-300), k


def test_fit_settings():
    s = FitSettings()
    assert (s.rank, s.lam, s.batch_size, s.seed, s.gtol, s.max_iter, s.method, s.n_train, s.centre) == (
        1, 0.1, 64, 0, 1e-9, 100, "newton-cg", None, False)
    assert FitSettings(rank=3).problem_kwargs() == {"rank": 3, "lam": 0.1, "batch_size": 64, "seed": 0,
                                                    "n_train": None, "centre": False, "targets": ("qv",)}


# ------------------------------------------------------- centring (issue 10 point 4, docs/math.md §13)


def _offset_features(folder, n: int, offset: float, n_val: int = 200, seed: int = 0):
    """Synthetic features with a large common offset: every image feature is shifted by
    ``offset`` times the spread of the image cloud along one unit vector, every text feature
    likewise along another (the pretrain split is a separate draw of the same distribution)."""
    d = synthetic_pairs(2 * n, n_val=n_val, d_img=8, d_txt=8, width=4, shuffle_rate=0.1, seed=seed)
    rng = np.random.default_rng(seed + 5)
    ux, uy = rng.normal(size=8), rng.normal(size=8)
    ux, uy = ux / np.linalg.norm(ux), uy / np.linalg.norm(uy)
    sx = np.linalg.norm(d.x - d.x.mean(0), axis=1).mean()
    sy = np.linalg.norm(d.y - d.y.mean(0), axis=1).mean()
    ox, oy = offset * sx * ux, offset * sy * uy
    feats = {"x_pretrain": d.x[n:] + ox, "y_pretrain": d.y[n:] + oy, "x_train": d.x[:n] + ox,
             "y_train": d.y[:n] + oy, "noise_mask": d.misaligned[:n], "x_val": d.x_val + ox, "y_val": d.y_val + oy,
             "x_test": d.x_val + ox, "labels_test": d.labels_val.astype(np.int64), "class_text": d.class_text + oy,
             "W_img": d.w_img0, "W_txt": d.w_txt0, "log_logit_scale": np.asarray(d.log_scale0), "meta": {}}
    save_features(folder, feats)
    return feats


@pytest.fixture(scope="module")
def offset_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offset_features")
    return folder, _offset_features(folder, 1000, 20.0)


def test_shared_offset_fit_converges_with_centring(offset_folder):
    """n = 1000, batches of 256, lam = 0.1, the kit's fit settings (newton-cg, at most 100
    iterations, gtol 1e-9): centred with the pretrain means, the fit converges in about 17
    iterations (uncentred it does not: next test)."""
    folder, feats = offset_folder
    settings = FitSettings(batch_size=256, centre=True)
    assert (settings.lam, settings.gtol, settings.max_iter) == (0.1, 1e-9, 100)
    problem = build_problem(folder, **settings.problem_kwargs())
    assert problem.config["centre"] is True and problem.config["centre_split"] == "pretrain"
    assert offset_ratio(problem.objective._x) < 0.2 and offset_ratio(problem.objective._y) < 0.2
    res = fit(problem.objective, gtol=settings.gtol, max_iter=settings.max_iter, method=settings.method)
    assert res.converged and res.grad_norm <= 1e-9 and res.iterations <= 40, res.summary()


def test_shared_offset_fit_stalls_without_centring(offset_folder):
    """The failure mode: the same features uncentred (offset ratio about 20) start with nearly
    parallel normalised embeddings (mean cosine 0.996), the Hessian at the optimum spans about
    0.1 .. 5.7e3, and newton-cg stops near gradient norm 2 after 100 iterations; the warning
    and fit_corrupted's error say why and what to change."""
    folder, _ = offset_folder
    settings = FitSettings(batch_size=256, centre=False)
    raw = build_problem(folder, **settings.problem_kwargs())
    assert raw.config["centre"] is False and raw.config["centre_split"] is None
    assert offset_ratio(raw.objective._x) > 15 and offset_ratio(raw.objective._y) > 15
    with pytest.warns(ConvergenceWarning, match="common offset") as caught:
        bad = fit(raw.objective, gtol=settings.gtol, max_iter=settings.max_iter, method=settings.method)
    assert not bad.converged and bad.grad_norm > 1e-6
    text = str(caught[-1].message)
    assert "Largest Hessian eigenvalue" in text and "centre" in text and "lam" in text
    msg = not_converged_message(raw, bad, settings)
    for needle in ("gradient norm", "common offset", "centre", "finetune.lam", "finetune.max_iter",
                   "finetune.method: newton"):
        assert needle in msg, needle


def test_centring_uses_the_pretrain_means_everywhere(offset_folder):
    folder, feats = offset_folder
    problem = build_problem(folder, rank=1, lam=0.1, batch_size=256, seed=0, centre=True)
    mx, my = feats["x_pretrain"].mean(0), feats["y_pretrain"].mean(0)
    x, y = problem.train_features
    torch.testing.assert_close(x, as_tensor(feats["x_train"] - mx))
    torch.testing.assert_close(y, as_tensor(feats["y_train"] - my))
    torch.testing.assert_close(problem.val._x, as_tensor(feats["x_val"] - mx))
    torch.testing.assert_close(problem.val._y, as_tensor(feats["y_val"] - my))
    torch.testing.assert_close(problem.test_set.x, as_tensor(feats["x_test"] - mx))
    torch.testing.assert_close(problem.test_set.class_text, as_tensor(feats["class_text"] - my))
    np.testing.assert_array_equal(problem.centring[0], mx)
    np.testing.assert_array_equal(problem.centring[1], my)
    cx, cy = problem.centre_features(feats["x_val"], feats["y_val"])
    torch.testing.assert_close(as_tensor(cx), problem.val._x)
    torch.testing.assert_close(as_tensor(cy), problem.val._y)
    raw = build_problem(folder, rank=1, lam=0.1, batch_size=256, seed=0, centre=False)
    assert raw.centring is None and raw.centre_features(feats["x_val"])[0] is not None
    np.testing.assert_array_equal(raw.centre_features(feats["x_val"])[0], feats["x_val"])
    # the statistic does not depend on the train pairs: changing them changes no mean
    changed = {**feats, "x_train": feats["x_train"] * 3.0, "y_train": feats["y_train"][::-1]}
    for a, b in zip(centring_means(feats)[:2], centring_means(changed)[:2]):
        np.testing.assert_array_equal(a, b)
    # without a pretrain split the validation split gives the means; a constant column (the
    # constant-1 feature of a projection bias) is never shifted
    no_pre = {k: v for k, v in feats.items() if not k.endswith("_pretrain")}
    no_pre["x_val"] = np.c_[feats["x_val"][:, :-1], np.ones(len(feats["x_val"]))]
    mu_img, mu_txt, split = centring_means(no_pre)
    assert split == "val" and mu_img[-1] == 0.0
    np.testing.assert_allclose(mu_img[:-1], feats["x_val"][:, :-1].mean(0))
    np.testing.assert_allclose(mu_txt, feats["y_val"].mean(0))


def test_influence_after_centring_agrees_with_retraining(tmp_path):
    """Centring with a statistic of the pretrain split leaves ``L - L_{-k}`` exact: the exact-removal
    (newton) prediction of the validation-loss change matches warm-started retraining."""
    _offset_features(tmp_path, 120, 20.0, n_val=60, seed=2)
    problem = build_problem(tmp_path, rank=1, lam=0.2, batch_size=40, seed=0, centre=True)
    res = fit(problem.objective, gtol=1e-10)
    assert res.converged, res.summary()
    engine = ECIF(problem.objective, res.theta, solver="dense")
    g_val = validation_gradient(problem.val, res.theta)
    idx = np.r_[np.flatnonzero(problem.mask)[:3], np.flatnonzero(~problem.mask)[:3]]
    table = loo_val_changes(problem.objective, res.theta, problem.val, idx, gtol=1e-10)
    assert table["converged"].all()
    predicted = np.array([engine.predicted_change(g_val, [int(k)], variant="newton") for k in idx])
    actual = table["actual"].to_numpy()
    # one Newton step with the full-data Hessian: close, not equal, at n = 120
    assert pearson(predicted, actual) >= 0.95
    np.testing.assert_allclose(predicted, actual, rtol=0.5, atol=0.1 * np.abs(actual).max())


def test_clean_objective_uses_the_true_captions(tmp_path):
    d, _ = _features(tmp_path / "none")
    assert build_problem(tmp_path / "none", rank=1, lam=0.3, batch_size=16, seed=1).clean_objective() is None
    feats = load_features(tmp_path / "none")
    y_clean = feats["y_train"][::-1].copy()  # any other captions of the same pairs
    save_features(tmp_path / "clean", {**feats, "y_train_clean": y_clean})
    p = build_problem(tmp_path / "clean", rank=1, lam=0.3, batch_size=16, seed=1, n_train=50)
    c = p.clean_objective()
    assert c.n == 50 and c.lam == p.objective.lam and c.batching is p.batching
    torch.testing.assert_close(c._x, p.objective._x)
    torch.testing.assert_close(c._y, as_tensor(y_clean[:50]))
    theta = p.param.theta0
    assert float(c.loss(theta)) != float(p.objective.loss(theta))


def test_fit_corrupted_passes_the_swapped_attribute_to_inject(monkeypatch):
    """fit_corrupted(attribute=...) reaches inject: the cleaning stage's systematic shape swap."""
    import ecif.data.datasets
    import ecif.data.noise
    from ecif.kit.problem import fit_corrupted

    seen = {}

    class Stop(Exception):
        pass

    def fake_inject(split, kind, rate, seed, **kw):
        seen.update(kind=kind, rate=rate, seed=seed, **kw)
        raise Stop

    monkeypatch.setattr(ecif.data.datasets, "load_dataset", lambda name, root=None: {"train": None})
    monkeypatch.setattr(ecif.data.noise, "inject", fake_inject)
    with pytest.raises(Stop):
        fit_corrupted("shapes", "data", "enc", "feats", kind="attribute_swap", rate=0.2, noise_seed=4,
                      systematic=True, attribute="shape")
    assert seen == {"kind": "attribute_swap", "rate": 0.2, "seed": 4, "systematic": True, "attribute": "shape"}


def test_scored_swap_fits_one_scored_fit_per_noise_seed(monkeypatch):
    """scored_swap_fits: a systematic attribute_swap fit per noise seed, every method's scores
    but not `random` (the cleaning table draws its own random deletions)."""
    import types

    import ecif.core.evaluate
    import ecif.experiments.detection
    import ecif.kit.problem as P

    calls = []

    def fake_fit(dataset, data_root, encoder_dir, features_dir, **kw):
        calls.append(dict(kw, dataset=dataset))
        fitted = types.SimpleNamespace(problem=types.SimpleNamespace(val=None), theta_hat=None, engine=lambda: None)
        return fitted, {}

    monkeypatch.setattr(P, "fit_corrupted", fake_fit)
    monkeypatch.setattr(ecif.core.evaluate, "validation_gradient", lambda val, theta: None)
    monkeypatch.setattr(ecif.experiments.detection, "detection_scores",
                        lambda engine, g, seed=0: {"ecif": np.zeros(3), "random": np.ones(3)})
    out = P.scored_swap_fits("shapes", "data", "enc", attribute="shape", rate=0.2, noise_seeds=[0, 2],
                             settings=P.FitSettings(lam=0.03))
    assert list(out) == [0, 2] and all(set(scores) == {"ecif"} for _, scores in out.values())
    assert [c["noise_seed"] for c in calls] == [0, 2]
    assert all(c["kind"] == "attribute_swap" and c["systematic"] and c["attribute"] == "shape" and c["rate"] == 0.2
               and c["settings"].lam == 0.03 and c["dataset"] == "shapes" for c in calls)
