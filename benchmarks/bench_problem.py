"""The problem of ``python -m ecif.experiments.bench``, for the benchmark scripts that study it.

``ecif.experiments.bench.run_one`` is the reference: synthetic frozen features of CLIP-like width
(512-d image and text features, embedding width 256, 20 classes, 10 % shuffled pairs), LoRA heads,
fixed batches of 256, lam = 1, a validation set of 1,000 pairs, and the base fit by Newton-CG to
``|grad| <= 1e-9`` from a subsample start with float32 products in its steps (preconditioned from
n = 32,768 on). ``benchmarks/sgd_retrain.py`` and ``benchmarks/spectrum_by_rank.py`` build it here,
once, so they study the same problem as each other and as the bench.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecif.core.batching import BatchingProtocol
from ecif.core.fit import FitResult, fit
from ecif.core.heads import LoRAHeads
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments.bench import default_precondition


@dataclass
class BenchProblem:
    data: object  # the synthetic pairs (features, misaligned mask, base projections)
    batching: BatchingProtocol
    objective: ContrastiveObjective  # L over the n train pairs
    validation: ContrastiveObjective  # the validation loss (lam = 0)
    precondition: int | None  # pairs of the spectral preconditioner's subsample (None: plain CG)


def build(n: int, rank: int = 8, seed: int = 0, data=None) -> BenchProblem:
    """The bench's problem with ``n`` train pairs and LoRA ``rank`` (``data``: reuse the synthetic
    pairs of an earlier call with the same ``n`` and ``seed``, e.g. for a sweep of ranks)."""
    d = data if data is not None else synthetic_pairs(n, n_val=1000, d_img=512, d_txt=512, width=256, n_classes=20,
                                                     latent=32, shuffle_rate=0.1, seed=seed)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=rank, seed=seed)
    batching = BatchingProtocol.from_seed(n, 256, seed)
    return BenchProblem(
        data=d, batching=batching,
        objective=ContrastiveObjective(param, d.x, d.y, batching, lam=1.0),
        validation=ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(1000, 256, seed + 1),
                                        lam=0.0),
        precondition=default_precondition(n))


def base_fit(problem: BenchProblem) -> FitResult:
    """``theta_hat`` as the bench fits it (see the module docstring)."""
    return fit(problem.objective, gtol=1e-9, method="newton-cg", subsample=4000,
               precondition=problem.precondition, precision="mixed")
