"""The sensitivity sweeps on a block-mode objective solve by CG (no dense Hessian, as the fit's own
engine): the damping sweep's scores equal the dense solve's at every damping."""

import numpy as np
import pandas as pd
import pytest
import torch

from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.core.batching import BatchingProtocol
from ecif.core.solvers import DenseSolver
from ecif.experiments import sensitivity

from tests.core.test_blocks import _problem, _rows


@pytest.fixture(scope="module")
def block_fit():
    param, obj, _, g = _problem(n=8, targets=("qv",), lam=2.0)
    res = fit(obj, gtol=1e-10, max_iter=100)
    assert res.converged
    theta = res.theta
    val = ContrastiveObjective(param, _rows(g, 8, 5, 8, "cls"), _rows(g, 8, 5, 6, "mean"),
                               BatchingProtocol.from_seed(8, 4, 1), lam=0.0)
    return obj, theta, val


def test_damping_sweep_in_block_mode_is_the_dense_solve_by_cg(block_fit, monkeypatch) -> None:
    obj, theta, val = block_fit
    g_val = validation_gradient(val, theta)
    h = obj.hessian(theta)
    dense = {mu: ECIF(obj, theta, solver=DenseSolver(h, mu)).influence_scores(g_val, variants=("ecif",))["ecif"]
             for mu in (0.0, 1.0)}
    assert float((dense[0.0] - dense[1.0]).abs().max()) > 1e-3 * float(dense[0.0].abs().max())  # mu matters
    monkeypatch.setattr(type(obj), "hessian", lambda *a, **k: pytest.fail("block mode formed a dense Hessian"))
    for mu, ref in dense.items():
        loo = pd.DataFrame({"pair": np.arange(obj.n), "actual": ref.numpy()})
        rows = sensitivity.damping_sweep(obj, theta, g_val, [mu], loo=loo, variants=("ecif",))
        assert rows["pearson"].iloc[0] > 1 - 1e-9
        assert np.isnan(rows["min_eigenvalue"].iloc[0])
    lam_rows = sensitivity.lam_sweep(obj, [2.0], val, variants=("ecif",), progress=False)
    assert bool(lam_rows["fit_converged"].iloc[0]) and np.isnan(lam_rows["min_eigenvalue"].iloc[0])
