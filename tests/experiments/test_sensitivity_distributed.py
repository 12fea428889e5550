"""The sensitivity sweeps with their settings as Dask tasks: a 2-worker LocalCluster of processes
gives the same tables as the serial run, bit for bit."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from ecif.experiments import distributed as D
from ecif.experiments.progress import Progress
from ecif.experiments.sensitivity import batch_size_sweep, damping_sweep, lam_sweep
from tests.tiny_problem import tiny_problem


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks take the caller's count: one thread each, as in the kit
    yield
    torch.set_num_threads(before)


def _square(shared, item, offset):
    return shared["base"] * item + offset, torch.get_num_threads()


def test_map_shared_serial_keeps_order_threads_and_counts():
    out = io.StringIO()
    res = D.map_shared(_square, {"base": 3}, [1, 2, 5], 10, threads=1, progress=Progress(3, "point", stream=out))
    assert res == [(13, 1), (16, 1), (25, 1)]
    assert out.getvalue().splitlines() == ["point 1/3", "point 2/3", "point 3/3"]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for c in a.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), c  # bit for bit, nan where nan
        else:
            assert x.tolist() == y.tolist(), c


@pytest.mark.slow
def test_sweeps_on_a_two_worker_cluster_equal_the_serial_sweeps(client):
    assert len(client.scheduler_info()["workers"]) == 2
    assert D.map_shared(_square, {"base": 2}, [4, 1, 3], 1, client=client, threads=1, progress=False) == \
        [(9, 1), (3, 1), (7, 1)]  # input order and the thread count, whatever the workers' order
    tp = tiny_problem(n=80, batch_size=40, seed=1)
    mask = tp.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:1], np.flatnonzero(~mask)[:2]]
    loo = pd.DataFrame({"pair": idx, "actual": [0.3, -0.1, 0.2]})
    kw = {"progress": False}

    damp = damping_sweep(tp.obj, tp.theta, tp.val_grad, [0.0, 0.1, 1.0], loo, mask, **kw)
    assert list(damp.damping.unique()) == [0.0, 0.1, 1.0] and damp.spearman.notna().all()
    _same(damp, damping_sweep(tp.obj, tp.theta, tp.val_grad, [0.0, 0.1, 1.0], loo, mask, client=client, **kw))

    lams = [0.5, 0.3]
    lam = lam_sweep(tp.obj, lams, tp.val_obj, idx, mask, variants=("ecif", "positive"), theta_init=tp.theta, **kw)
    assert list(lam.lam) == [0.5, 0.5, 0.3, 0.3] and lam.fit_converged.all() and lam.loo_converged.all()
    assert lam.min_eigenvalue.iloc[0] > lam.min_eigenvalue.iloc[2] > 0  # more lam, better conditioned
    _same(lam, lam_sweep(tp.obj, lams, tp.val_obj, idx, mask, variants=("ecif", "positive"), theta_init=tp.theta,
                         client=client, **kw))

    sizes = [40, None]
    bs = batch_size_sweep(tp.param, tp.data.x, tp.data.y, sizes, 0.2, tp.val_obj, idx, mask, seed=1,
                          variants=("ecif",), **kw)
    assert list(bs.batch_size) == [40, 80] and bs.loo_converged.all()
    assert bs.is_spearman_vs_first.iloc[0] == pytest.approx(1.0) and bs.is_spearman_vs_first.iloc[1] < 1.0
    # the first setting reproduces the fixture's fit (same objective): its curvature
    assert bs.min_eigenvalue.iloc[0] == pytest.approx(tp.engine.solver.report["min_eigenvalue"], rel=1e-6)
    _same(bs, batch_size_sweep(tp.param, tp.data.x, tp.data.y, sizes, 0.2, tp.val_obj, idx, mask, seed=1,
                               variants=("ecif",), client=client, **kw))
