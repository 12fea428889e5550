"""The problem of ``python -m ecif.experiments.bench`` and its base fit, for the benchmark scripts
that study it.

The problem is :func:`ecif.experiments.bench.build_problem` (synthetic frozen features of
CLIP-like width, LoRA heads, fixed batches of 256, lam = 1, a validation set of 1,000 pairs);
the base fit is the bench's: Newton-CG to ``|grad| <= 1e-9`` from a subsample start with float32
products in its steps, spectrally preconditioned from n = 32,768 on
(:func:`ecif.experiments.bench.default_precondition`). ``benchmarks/sgd_retrain.py`` and
``benchmarks/spectrum_by_rank.py`` use both, so they study the same problem as each other and as
the bench.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecif.core.fit import FitResult, fit
from ecif.experiments.bench import build_problem, default_precondition


@dataclass
class BenchProblem:
    data: object  # the synthetic pairs (features, misaligned mask, base projections)
    batching: object  # the train pairs' BatchingProtocol
    objective: object  # L over the n train pairs
    validation: object  # the validation loss (lam = 0)
    precondition: int | None  # pairs of the spectral preconditioner's subsample (None: plain CG)


def build(n: int, rank: int = 8, seed: int = 0, data=None) -> BenchProblem:
    """The bench's problem with ``n`` train pairs and LoRA ``rank`` (``data``: reuse the synthetic
    pairs of an earlier call with the same ``n`` and ``seed``, e.g. for a sweep of ranks)."""
    p = build_problem(n, 256, rank=rank, seed=seed, data=data)
    return BenchProblem(data=p.data, batching=p.objective.batching, objective=p.objective,
                        validation=p.validation, precondition=default_precondition(n))


def base_fit(problem: BenchProblem) -> FitResult:
    """``theta_hat`` as the bench fits it (see the module docstring)."""
    return fit(problem.objective, gtol=1e-9, method="newton-cg", subsample=4000,
               precondition=problem.precondition, precision="mixed")
