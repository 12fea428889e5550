"""Leave-out refits on Dask distributed: the scheduler value, the errors, and the identity with
the serial run (a 2-worker LocalCluster of processes)."""

import io
import time

import numpy as np
import pytest
import torch

from ecif.experiments import distributed as D
from ecif.experiments.progress import Progress
from ecif.experiments.retraining import loo_experiment, loo_val_changes
from tests.tiny_problem import tiny_problem


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("null", None), ("None", None), ("", None), ("serial", None),
    ("local", "local"), ("local:2", "local:2"), (" tcp://10.0.0.5:8786 ", "tcp://10.0.0.5:8786"),
    ("tls://sched:8786", "tls://sched:8786"),
])
def test_resolve_address(value, expected):
    assert D.resolve_address(value) == expected


@pytest.mark.parametrize("value", ["locale", "local:0", "local:two", "10.0.0.5:8786", "http://x:1", 3])
def test_resolve_address_refuses_what_is_not_a_scheduler(value):
    with pytest.raises(ValueError, match=r"not a scheduler.*Fix: use one of null \(serial\), local"):
        D.resolve_address(value)


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, "tcp://cluster:8786")
    assert D.resolve_address(None) == "tcp://cluster:8786"
    assert D.resolve_address("local") == "tcp://cluster:8786"
    assert D.resolve_address("local", env=False) == "local"
    monkeypatch.setenv(D.ENV_VAR, "null")
    assert D.resolve_address("local") is None
    monkeypatch.setenv(D.ENV_VAR, "   ")  # empty: not set
    assert D.resolve_address("local:3") == "local:3"
    monkeypatch.setenv(D.ENV_VAR, "nowhere")
    with pytest.raises(ValueError, match=D.ENV_VAR):
        D.resolve_address(None)


def test_serial_needs_no_client():
    assert D.connect(None) is None and D.connect("null") is None
    D.close(None)


def test_a_scheduler_that_does_not_answer_fails_fast_with_the_fix():
    with pytest.raises(ConnectionError) as err:
        D.connect("tcp://127.0.0.1:9", timeout=1)
    text = str(err.value)
    assert "tcp://127.0.0.1:9" in text and "dask scheduler" in text and "Fix:" in text and D.ENV_VAR in text


def test_progress_is_sparse_counts_only_off_a_terminal():
    out = io.StringIO()
    bar = Progress(40, "refit", stream=out)
    for _ in range(40):
        bar.step()
    lines = out.getvalue().splitlines()
    assert lines == [f"refit {i}/40" for i in range(4, 41, 4)]
    assert bar.lines == lines
    timed = Progress(3, "cell", stream=io.StringIO(), timings=True)
    for _ in range(3):
        timed.step()
    assert len(timed.lines) == 3 and all("elapsed, ETA" in line for line in timed.lines)
    quiet = Progress(5, enabled=False, stream=out)
    quiet.step(5)
    assert quiet.lines == ["refit 5/5"] and out.getvalue().splitlines() == lines


def test_serial_retrain_many_matches_loo_val_changes():
    tp = tiny_problem()
    rows = D.retrain_many(tp.obj, tp.theta, [[3], [17]], val_objective=tp.val_obj,
                          preconditioner=tp.engine.solver, progress=False, keep_theta=True)
    table = loo_val_changes(tp.obj, tp.theta, tp.val_obj, [3, 17], preconditioner=tp.engine.solver, progress=False)
    assert [r["actual"] for r in rows] == table["actual"].tolist()
    assert all(r["converged"] and r["theta"].dtype == torch.float64 for r in rows)


@pytest.mark.slow
def test_two_worker_local_cluster_is_identical_to_serial(client, capsys):
    assert len(client.scheduler_info()["workers"]) == 2
    tp = tiny_problem()
    pairs = np.array([0, 5, 11, 42, 77, 120, 150, 199])
    serial, s_info = loo_experiment(tp.obj, tp.val_obj, tp.theta, pairs)
    spread, d_info = loo_experiment(tp.obj, tp.val_obj, tp.theta, pairs, client=client)
    cols = [c for c in serial.columns if c != "seconds"]
    assert serial["pair"].tolist() == pairs.tolist() == spread["pair"].tolist()  # input order
    for c in cols:
        assert np.array_equal(serial[c].to_numpy(), spread[c].to_numpy()), c
    err = capsys.readouterr().err.splitlines()
    assert err.count("refit 8/8") == 2  # progress from both paths, counts only (not a terminal)

    # group removals and the refitted parameters themselves, bit for bit
    groups = [[1, 2, 3], np.arange(40, 60), [199]]
    a = D.retrain_many(tp.obj, tp.theta, groups, keep_theta=True, progress=False)
    b = D.retrain_many(tp.obj, tp.theta, groups, keep_theta=True, progress=False, client=client)
    for ra, rb in zip(a, b):
        assert torch.equal(ra["theta"], rb["theta"]) and ra["iterations"] == rb["iterations"]


@pytest.mark.slow
def test_the_data_is_scattered_once_and_released(client):
    tp = tiny_problem()
    before = set(client.who_has())
    D.retrain_many(tp.obj, tp.theta, [[k] for k in range(6)], val_objective=tp.val_obj, client=client,
                   progress=False)
    time.sleep(0.5)
    assert set(client.who_has()) == before  # the scattered data does not outlive the call
