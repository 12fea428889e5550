"""A small synthetic ECIF problem shared by the baseline and experiment tests (fast on 2 cores).

Cached per argument set for the whole test session: tests must not modify what it returns."""

from dataclasses import dataclass
from functools import lru_cache

import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.heads import LinearHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs


@dataclass
class Tiny:
    data: object
    param: LinearHeads
    obj: ContrastiveObjective
    val_obj: ContrastiveObjective
    theta: torch.Tensor
    engine: ECIF
    val_grad: torch.Tensor


@lru_cache(maxsize=4)
def tiny_problem(n=200, batch_size=50, seed=0, lam=0.2, shuffle_rate=0.15) -> Tiny:
    d = synthetic_pairs(n, n_val=150, d_img=6, d_txt=6, width=6, shuffle_rate=shuffle_rate, seed=seed)
    param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch_size, seed), lam=lam)
    val_obj = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(150, batch_size, seed + 1))
    res = fit(obj, gtol=1e-10)
    assert res.converged, res.summary()
    eng = ECIF(obj, res.theta, solver="dense")
    return Tiny(d, param, obj, val_obj, res.theta, eng, validation_gradient(val_obj, res.theta))
