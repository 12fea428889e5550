"""Small synthetic problems shared by the core tests (import as ``from core_problems import ...``)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.heads import LinearHeads, LoRAHeads
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs


def tiny_objective(kind: str = "linear", n: int = 12, batch_size: int | None = None, lam: float = 0.1,
                   seed: int = 0) -> ContrastiveObjective:
    """A tiny objective (a dozen pairs, 3-d features) for exact derivative checks."""
    d = synthetic_pairs(n, n_val=4, d_img=3, d_txt=4, width=3, n_classes=3, latent=3, shuffle_rate=0.25,
                        seed=seed)
    if kind == "linear":
        param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0)
    else:
        param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=2, seed=seed)
    return ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch_size, seed), lam=lam)


def random_theta(objective: ContrastiveObjective, scale: float = 0.3, seed: int = 1) -> torch.Tensor:
    """``theta0`` plus a seeded perturbation (so LoRA's ``B`` factors are non-zero)."""
    g = torch.Generator().manual_seed(seed)
    return objective.theta0 + scale * torch.randn(objective.n_params, generator=g, dtype=torch.float64)


def reference_loss(objective: ContrastiveObjective, theta: torch.Tensor, remove=(), log_zeta=None,
                   zeta_pair: int | None = None) -> torch.Tensor:
    """Independent, loop-based reference for the objective of docs/math.md §1-§3.

    Deletes the rows and columns of ``remove`` literally (index selection, no masks); with
    ``log_zeta`` adds ``log zeta`` once to every entry in row ``zeta_pair`` or column
    ``zeta_pair`` of its batch's similarity matrix (the paper's device).
    """
    u, v = objective.param.embed(theta, objective.data)
    u = u / u.norm(dim=1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True)
    s = torch.exp(objective.param.log_scale(theta))
    total = theta.new_zeros(())
    removed = set(int(r) for r in remove)
    for batch in objective.batching.batches():
        keep = [int(i) for i in batch if int(i) not in removed]
        sim = s * u[keep] @ v[keep].T
        if log_zeta is not None and zeta_pair in keep:
            j = keep.index(zeta_pair)
            hit = torch.zeros_like(sim, dtype=torch.bool)
            hit[j, :] = True
            hit[:, j] = True
            sim = sim + log_zeta * hit
        diag = torch.diagonal(sim)
        total = total + (-2 * diag + torch.logsumexp(sim, 1) + torch.logsumexp(sim, 0)).sum()
    reg = 0.5 * objective.lam * ((theta - objective.theta0) ** 2).sum()
    return total / objective.n + reg


def loo_problem(n: int = 300, batch_size: int | None = 64, lam: float = 0.2, kind: str = "linear", seed: int = 1):
    """The leave-one-out benchmark problem: 6-d features, 10 % shuffled captions.

    Size and regularisation: with ``lam = 0.2`` the Hessian at the optimum is clearly positive
    definite (smallest eigenvalue about 0.03) and every leave-one-out refit moves the parameters
    by O(1/n), so Newton refits reach a gradient norm below 1e-9 in a handful of steps. With
    ``lam`` near 0.01 the normalised-embedding objective has degenerate valleys (an embedding
    ``W x -> 0``) into which single-pair refits drift, and the ground truth is meaningless.
    """
    d = synthetic_pairs(n, n_val=200, d_img=6, d_txt=6, width=6, shuffle_rate=0.1, seed=seed)
    if kind == "linear":
        param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0)
    else:
        param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=3, seed=seed)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch_size, seed), lam=lam)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(200, batch_size, seed + 1), lam=0.0)
    return d, obj, val


@functools.lru_cache(maxsize=None)
def fitted_loo_problem(kind: str = "linear"):
    """:func:`loo_problem` with its fit and dense ECIF engine, computed once per test session."""
    from ecif.core.fit import fit
    from ecif.core.influence import ECIF

    d, obj, val = loo_problem(kind=kind)
    res = fit(obj)
    return d, obj, val, res, ECIF(obj, res.theta, "dense")


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return pearson(ra, rb)
