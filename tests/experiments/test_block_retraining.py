"""Block mode against retraining (issue 11): LoRA inside the last block of both towers of the
embedded encoder (ViT + MiniLM), ECIF against leave-one-out and group refits.

To keep the test to a few minutes the train pairs are those whose caption uses the first
template (ten distinct captions: the MiniLM block runs once per distinct caption); the pipeline's
own numbers on all 359 pairs are in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.blocks import BlockLoRA
from ecif.core.evaluate import validation_gradient, validation_loss
from ecif.core.fit import fit
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.data import encoders as E
from ecif.experiments.block_features import extract_block_features
from ecif.data.embedded import digits
from ecif.data.noise import inject
from ecif.experiments.metrics import loo_agreement
from ecif.experiments.retraining import loo_val_changes, sample_loo_pairs

D = torch.float64


@pytest.fixture(scope="module")
def block_problem(tmp_path_factory):
    ds = digits()
    model, tok, _ = E.train_default(ds, seed=0, epochs=10, progress=False)
    corruption = inject(ds["train"], "shuffle", 0.25, seed=0, spec=ds.spec)
    f = extract_block_features(model, tok, ds, 1, corruption=corruption, splits=("train", "val"))
    first = ds.spec.templates[0].split("{")[0]
    keep = np.array([c.startswith(first) for c in corruption.captions])
    x, y, mask = f["x_train"][keep], f["y_train"][keep], f["noise_mask"][keep]
    vkeep = np.array([c.startswith(first) for c in ds["val"].captions])
    img, txt = f["suffix"]
    param = BlockLoRA(img, txt, float(f["log_logit_scale"]), rank=1, targets=("qv",), seed=0)
    obj = ContrastiveObjective(param, torch.as_tensor(x, dtype=D), torch.as_tensor(y, dtype=D),
                               BatchingProtocol.from_seed(len(x), 32, 0), lam=0.3)
    xv, yv = f["x_val"][vkeep], f["y_val"][vkeep]
    val = ContrastiveObjective(param, torch.as_tensor(xv, dtype=D), torch.as_tensor(yv, dtype=D),
                               BatchingProtocol.from_seed(len(xv), 32, 1))
    res = fit(obj, gtol=1e-9, method="newton-cg")
    assert res.converged, res.summary()
    eng = ECIF(obj, res.theta, solver="cg")
    return obj, val, res, eng, mask


@pytest.mark.slow
def test_block_mode_agrees_with_leave_one_out(block_problem):
    obj, val, res, eng, mask = block_problem
    assert len(torch.unique(obj._y, dim=0)) == 10 and 70 <= obj.n <= 110 and 15 <= mask.sum()
    scores = eng.influence_scores(validation_gradient(val, res.theta))
    idx = sample_loo_pairs(mask, 30, 8, seed=0)
    table = loo_val_changes(obj, res.theta, val, idx, gtol=1e-9, method="newton-cg", progress=False)
    print(f"\n[blocks] P = {obj.n_params}, n = {obj.n}; refits: worst gradient norm {table['grad_norm'].max():.2e}")
    assert table["converged"].all() and table["grad_norm"].max() <= 1e-9
    actual = table["actual"].to_numpy()
    clean = ~mask[idx]
    stats = {}
    for v in ("positive", "ecif", "newton"):
        p = scores[v].numpy()[idx]
        stats[v] = (loo_agreement(p, actual)["pearson"], loo_agreement(p[clean], actual[clean])["pearson"])
    print("[blocks] LOO Pearson (all, clean):", {v: tuple(round(s, 4) for s in st) for v, st in stats.items()})
    assert stats["ecif"][0] >= 0.95 and stats["newton"][0] >= 0.95
    assert stats["ecif"][1] >= stats["positive"][1]  # the negative role matters on the clean pairs


@pytest.mark.slow
def test_block_mode_group_removal(block_problem):
    obj, val, res, eng, mask = block_problem
    g_val = validation_gradient(val, res.theta)
    h = eng.solver.solve(g_val)  # one solve: g_val^T H^-1 b = h^T b for every group's gradient term b
    base = validation_loss(val, res.theta)
    rng = np.random.default_rng(1)
    pred, actual = {"ecif": [], "newton": []}, []
    for _ in range(6):
        group = rng.choice(obj.n, size=int(rng.integers(max(2, obj.n // 20), obj.n // 10 + 1)), replace=False)
        refit = fit(obj.without(group), theta_init=res.theta, gtol=1e-9, method="newton-cg")
        assert refit.converged, refit.summary()
        actual.append(validation_loss(val, refit.theta) - base)
        for v in pred:
            pred[v].append(float(h @ eng.gradient_term(group, v)))
    stats = {v: loo_agreement(np.array(p), np.array(actual))["pearson"] for v, p in pred.items()}
    print("[blocks] group removal (6 sets of 5-10 %), Pearson:", {v: round(s, 4) for v, s in stats.items()})
    assert stats["ecif"] >= 0.85 and stats["newton"] >= 0.85
