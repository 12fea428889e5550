"""Mixed-precision inverse-Hessian solves (docs/math.md §15): float32 Hessian-vector products
summed in float64, and CG on them refined with float64 residuals to the float64 answer."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from core_problems import fitted_loo_problem, loo_problem

from ecif.core.evaluate import validation_gradient
from ecif.core.heads import LinearHeads, LoRAHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.core.solvers import CGSolver, MixedPrecisionSolver, SolverError, make_solver
from ecif.core.terms import VARIANTS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``."""
    return float((a - b).abs().max() / b.abs().max())


def _build(kind: str, device=None):
    """:func:`core_problems.loo_problem` (300 pairs, batches of 64), on ``device`` if given."""
    d, obj, val = loo_problem(kind=kind)
    if device is None:
        return obj, val
    kw = {"device": device}
    param = (LinearHeads(d.w_img0, d.w_txt0, d.log_scale0, **kw) if kind == "linear"
             else LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=3, seed=1, **kw))
    obj = ContrastiveObjective(param, d.x, d.y, obj.batching, lam=obj.lam)
    val = ContrastiveObjective(param, d.x_val, d.y_val, val.batching, lam=0.0)
    return obj, val


@functools.lru_cache(maxsize=None)
def _fitted(kind: str):
    """The fitted leave-one-out problem (shared with the other core tests) and its validation
    gradient."""
    _, obj, val, res, _ = fitted_loo_problem(kind)
    assert res.converged, res.summary()
    return obj, res.theta, validation_gradient(val, res.theta)


# ------------------------------------------------------------------ the float32 product


@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_float32_product_is_float32_accurate_and_float64_valued(kind):
    obj, th, _ = _fitted(kind)
    v = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h64, h32 = obj.hvp(th, v), obj.hvp(th, v, "float32")
    assert h32.dtype == torch.float64 and h32.device == th.device and h32.shape == h64.shape
    rel = _rel(h32, h64)
    # float32 rounding: clearly off the float64 product (so refinement has something to fix) ...
    assert rel > 1e-9, rel
    # ... by about float32's unit roundoff, not more
    assert rel < 1e-5, rel
    # the float64 product is unchanged by the option's existence
    assert torch.equal(obj.hvp(th, v, "float64"), h64)


def test_float32_product_streams_over_chunks():
    """Many small chunks (each a float32 product, summed in float64) give the one-chunk result
    to float32 accuracy."""
    obj, th, _ = _fitted("lora")
    v = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    one = obj.hvp(th, v, "float32")
    obj.CHUNK_ENTRIES = 64 * 64  # one batch per chunk
    try:
        assert len(obj._chunks()) == obj.batching.n_batches > 3
        many = obj.hvp(th, v, "float32")
    finally:
        del obj.CHUNK_ENTRIES
    assert _rel(many, obj.hvp(th, v)) < 1e-5 and _rel(many, one) < 1e-5


# ------------------------------------------------------------------ the refined solve


def test_refinement_recovers_the_float64_solution_where_float32_alone_does_not():
    obj, th, g = _fitted("lora")
    exact = make_solver(obj, th, "dense").solve(g)
    # the exact solution of the float32 system, from its dense matrix (P products)
    eye = torch.eye(obj.n_params, dtype=torch.float64, device=th.device)
    h32 = torch.stack([obj.hvp(th, eye[:, i], "float32") for i in range(obj.n_params)], dim=1)
    x32 = torch.linalg.solve(0.5 * (h32 + h32.T), g)
    assert _rel(x32, exact) > 1e-9  # float32 products alone: not the float64 answer
    mixed = make_solver(obj, th, "cg", precision="mixed", rtol=1e-10)
    assert isinstance(mixed, MixedPrecisionSolver)
    x = mixed.solve(g)
    assert _rel(x, exact) <= 1e-6
    assert _rel(x, exact) < 0.1 * _rel(x32, exact)  # refinement beats the float32 solution
    rep = mixed.report
    assert rep["relative_residual"] <= 1e-10 and rep["solves"][-1]["converged"]
    # one float64 product per refinement, the rest float32
    assert rep["float64_products"] == rep["solves"][-1]["refinements"] >= 2
    assert rep["float32_products"] == rep["iterations"] > 5 * rep["float64_products"]


@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_mixed_influence_scores_match_float64(kind):
    obj, th, g = _fitted(kind)
    dense = ECIF(obj, th, solver="dense").influence_scores(g)
    cg = ECIF(obj, th, solver="cg", rtol=1e-10).influence_scores(g)
    eng = ECIF(obj, th, solver="cg", rtol=1e-10, precision="mixed")
    assert isinstance(eng.solver, MixedPrecisionSolver)
    mixed = eng.influence_scores(g)
    for v in VARIANTS:
        assert _rel(mixed[v], dense[v]) <= 1e-6, v
        assert _rel(mixed[v], cg[v]) <= 1e-6, v
    # "auto" with mixed precision means the matrix-free solve
    assert isinstance(ECIF(obj, th, precision="mixed").solver, MixedPrecisionSolver)
    assert isinstance(ECIF(obj, th, solver="cg").solver, CGSolver)  # the default is unchanged


def test_mixed_solve_preconditioned_and_several_columns():
    obj, th, g = _fitted("lora")
    exact = make_solver(obj, th, "dense", damping=0.01)
    mixed = make_solver(obj, th, "cg", damping=0.01, precision="mixed", precondition=128, precondition_steps=40,
                        rtol=1e-10)
    b = torch.stack([g, torch.randn(obj.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)],
                    dim=1)
    x = mixed.solve(b)
    assert x.shape == b.shape and _rel(x, exact.solve(b)) <= 1e-6
    assert len(mixed.report["solves"]) == 2 and all(s["converged"] for s in mixed.report["solves"])


def _spd(p=30, cond=1e4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, np.log10(cond), p, dtype=torch.float64)) @ q.T


def test_refinement_on_a_matrix_reaches_float64_accuracy():
    h = _spd()
    h32 = h.float()
    b = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(h, b)
    s = MixedPrecisionSolver(lambda v: h @ v, lambda v: (h32 @ v.float()).double(), 30, rtol=1e-12,
                             inner_rtol=1e-4, max_iter=500)
    x = s.solve(b)
    assert _rel(x, exact) < 1e-9
    assert float((b - h @ x).norm() / b.norm()) <= 1e-12
    assert _rel(torch.linalg.solve(h32, b.float()).double(), exact) > 1e-6  # float32 alone


def test_cg_counts_products():
    h = _spd(cond=50.0)
    s = CGSolver(lambda v: h @ v, 30, rtol=1e-8)
    s.solve(torch.ones(30, dtype=torch.float64))
    assert s.report["products"] == s.report["iterations"] + 1  # the final true residual
    s = CGSolver(lambda v: h @ v, 30, rtol=1e-8, final_residual=False)
    s.solve(torch.ones(30, dtype=torch.float64))
    assert s.report["products"] == s.report["iterations"]


def test_stalled_refinement_fails_loudly():
    h = _spd(cond=10.0)
    b = torch.ones(30, dtype=torch.float64)
    # a "float32" operator 2.5x too small: each correction overshoots, the residual grows
    bad = MixedPrecisionSolver(lambda v: h @ v, lambda v: 0.4 * (h @ v), 30)
    with pytest.raises(SolverError, match="stalled"):
        bad.solve(b)
    capped = MixedPrecisionSolver(lambda v: h @ v, lambda v: 0.9 * (h @ v), 30, max_refinements=2,
                                  strict=False)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        capped.solve(b)
    assert capped.report["float64_products"] == 2 and not capped.report["solves"][-1]["converged"]


def test_bad_precision_input():
    obj, th, _ = _fitted("linear")
    v = torch.ones(obj.n_params, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown precision"):
        obj.hvp(th, v, "float16")
    with pytest.raises(ValueError, match="unknown precision"):
        make_solver(obj, th, "cg", precision="float32")
    with pytest.raises(ValueError, match="kind='cg'"):
        make_solver(obj, th, "dense", precision="mixed")
    with pytest.raises(ValueError, match="inner_rtol"):
        make_solver(obj, th, "cg", precision="mixed", inner_rtol=1.0)
    obj2, _ = _build("linear")
    obj2.param.structured_hvp = False  # as block mode: double backward only
    with pytest.raises(ValueError, match="structured"):
        make_solver(obj2, th, "cg", precision="mixed")
    with pytest.raises(ValueError, match="structured"):
        obj2.hvp(th, v, "float32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_solve_follows_the_device():
    cpu_obj, th, g = _fitted("lora")
    obj, _ = _build("lora", "cuda")
    th_c, g_c = th.to("cuda"), g.to("cuda")
    h = obj.hvp(th_c, g_c, "float32")
    assert h.device.type == "cuda" and h.dtype == torch.float64
    x = make_solver(obj, th_c, "cg", precision="mixed", rtol=1e-10).solve(g_c)
    assert x.device.type == "cuda"
    assert _rel(x.cpu(), make_solver(cpu_obj, th, "dense").solve(g)) <= 1e-6
