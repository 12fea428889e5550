"""A cold retraining done the way the paper retrains (epochs of Adam), against the exact one.

    .venv/bin/python benchmarks/sgd_retrain.py                          # n = 4000 and 16000
    .venv/bin/python benchmarks/sgd_retrain.py --n 100000 --epochs 100 --checkpoints 10 30 100

The problem is the one of ``python -m ecif.experiments.bench`` (synthetic frozen features of
CLIP-like width, LoRA rank 8 heads, lam = 1, fixed batches of 256), with the same removed pair
``k`` (the first misaligned one). For each ``n`` it measures, in one run:

1. the base fit ``theta_hat`` (Newton-CG, as in the bench; not part of any ratio);
2. ECIF for every pair: one influence solve (rtol 1e-6, mixed precision) plus the all-pairs pass,
   ``score_s``;
3. the exact leave-one-out optimum ``theta_-k`` (the kit's Newton-CG retraining warm-started from
   ``theta_hat`` to ``|grad L_-k| <= 1e-9``) and the validation-loss change it causes,
   ``exact_change = L_val(theta_-k) - L_val(theta_hat)``, which ECIF predicts (``ecif_change``);
4. a cold retraining of ``L_-k`` as a training loop does it: Adam from ``theta0`` over the same
   fixed batches (each step one batch, in a new random order every epoch; the step's loss is the
   batch's share of ``L_-k`` scaled to an unbiased estimate of the whole, plus the regulariser),
   ``--lr`` with cosine decay to zero over ``--epochs``.

At each checkpoint epoch of the Adam run it prints a row (as soon as it is reached): seconds of
Adam so far (checkpoint evaluations excluded), ``|grad L_-k|`` at its iterate, its distance to
``theta_-k`` over the leave-one-out shift ``|theta_-k - theta_hat|`` (above 1: the retraining
lands farther from the exact answer than removing the pair moves it), its validation-loss change
``sgd_change = L_val(theta_sgd) - L_val(theta_hat)`` next to ``exact_change``, and
``score_over_sgd = score_s / seconds``. Progress of the fit and of the epochs goes to stderr.

What it shows: the contrastive loss's leave-one-out effect is of order ``1/n``; a first-order
retraining stops far farther from the optimum than that, so it cannot serve as ground truth for
one pair, whatever it costs. The kit's ground truth is the Newton-CG retraining (bench columns
``retrain_s``, ``cold_retrain_s``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient, validation_loss
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.experiments.retraining import retrain

from bench_problem import base_fit, build  # benchmarks/bench_problem.py, next to this script

COLUMNS = ["n", "epoch", "sgd_s", "grad_norm", "dist_over_shift", "sgd_change", "exact_change", "ecif_change",
           "score_s", "score_over_sgd"]


def batch_objectives(param, x, y, batch_ids: np.ndarray, remove: int) -> list[tuple[ContrastiveObjective, float]]:
    """One objective per batch of the protocol with pair ``remove`` left out, each with its weight
    ``|b| / n`` in ``L_-k`` (``n`` the full count, as the leave-out objective keeps ``1/n``):
    ``L_-k = sum_b w_b L_b + reg``, with ``L_b`` the batch's mean InfoNCE term (``lam = 0``)."""
    n = len(batch_ids)
    keep = np.ones(n, dtype=bool)
    keep[remove] = False
    out = []
    for m in range(int(batch_ids.max()) + 1):
        rows = np.flatnonzero((batch_ids == m) & keep)
        idx = torch.as_tensor(rows)
        ob = ContrastiveObjective(param, x[idx], y[idx], BatchingProtocol(np.zeros(len(rows), dtype=np.int64)), lam=0.0)
        out.append((ob, len(rows) / n))
    return out


def adam_epochs(batches, theta0: torch.Tensor, lam: float, epochs: int, lr: float, seed: int, checkpoints,
                on_checkpoint) -> None:
    """Adam on ``sum_b w_b L_b(theta) + (lam/2)|theta - theta0|^2`` from ``theta0``: each step one
    batch ``b`` (a fresh permutation per epoch), loss ``M w_b L_b + reg`` (``M`` batches: an
    unbiased estimate of the whole), ``lr`` decayed to 0 by a cosine over all steps. Calls
    ``on_checkpoint(epoch, theta, seconds)`` after each epoch in ``checkpoints`` (``seconds``:
    Adam's own time so far)."""
    th = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([th], lr=lr)
    steps = epochs * len(batches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed)
    seconds = 0.0
    m_count = len(batches)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for m in rng.permutation(m_count):
            ob, w = batches[m]
            loss = (m_count * w) * ob.loss(th) + 0.5 * lam * ((th - theta0) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds += time.perf_counter() - t0
        if epoch in checkpoints:
            on_checkpoint(epoch, th.detach().clone(), seconds)


def run(n: int, epochs: int, checkpoints, lr: float, seed: int = 0, say=print, emit=print) -> None:
    prob = build(n, seed=seed)
    d, batching, obj, val, pre = prob.data, prob.batching, prob.objective, prob.validation, prob.precondition
    param = obj.param

    say(f"[n={n}] base fit")
    res = base_fit(prob)
    g_val = validation_gradient(val, res.theta)
    say(f"[n={n}] ECIF for every pair")
    t0 = time.perf_counter()
    eng = ECIF(obj, res.theta, solver="cg", rtol=1e-6, precondition=pre, precision="mixed")
    h = eng.solver.solve(g_val)
    obj.directional_terms(res.theta, h)
    score_s = time.perf_counter() - t0
    k = int(np.flatnonzero(d.misaligned)[0])
    say(f"[n={n}] exact leave-one-out optimum of pair {k}")
    exact = retrain(obj, res.theta, [k], gtol=1e-9, method="newton-cg", precondition=pre, precision="mixed")
    base_val = float(validation_loss(val, res.theta))
    exact_change = float(validation_loss(val, exact.theta)) - base_val
    ecif_change = float(eng.predicted_change(g_val, [k]))
    shift = float((exact.theta - res.theta).norm())
    minus_k = obj.without([k])
    batches = batch_objectives(param, torch.as_tensor(d.x, dtype=torch.float64),
                               torch.as_tensor(d.y, dtype=torch.float64), batching.batch_ids, k)
    # the batches' weighted losses must add up to L_-k (the objective Adam minimises is the exact one)
    whole = sum(w * float(ob.loss(res.theta)) for ob, w in batches) + 0.5 * obj.lam * float(
        ((res.theta - obj.theta0) ** 2).sum())
    if abs(whole - float(minus_k.loss(res.theta))) > 1e-10 * abs(whole):
        raise RuntimeError(f"the per-batch losses add up to {whole!r}, not L_-k = {float(minus_k.loss(res.theta))!r}")

    def checkpoint(epoch, theta, seconds):
        emit({"n": n, "epoch": epoch, "sgd_s": round(seconds, 2),
              "grad_norm": float(f"{float(minus_k.gradient(theta).norm()):.2e}"),
              "dist_over_shift": float(f"{float((theta - exact.theta).norm()) / shift:.3g}"),
              "sgd_change": float(f"{float(validation_loss(val, theta)) - base_val:.3e}"),
              "exact_change": float(f"{exact_change:.3e}"), "ecif_change": float(f"{ecif_change:.3e}"),
              "score_s": round(score_s, 2), "score_over_sgd": round(score_s / seconds, 3)})

    say(f"[n={n}] Adam from theta0, {epochs} epochs of {len(batches)} batches, lr {lr}")
    adam_epochs(batches, obj.theta0, obj.lam, epochs, lr, seed, set(checkpoints), checkpoint)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4000, 16000])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    bad = [c for c in args.checkpoints if not 1 <= c <= args.epochs]
    if bad:
        ap.error(f"checkpoints {bad} lie outside 1..{args.epochs} (--epochs); pick epochs the run reaches.")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        ap.error(f"--lr must be a positive number, got {args.lr}.")
    torch.set_num_threads(args.threads)
    print("load average %.2f %.2f %.2f" % os.getloadavg(), file=sys.stderr, flush=True)
    print(" | ".join(COLUMNS), flush=True)
    for n in args.n:
        run(n, args.epochs, args.checkpoints, args.lr,
            say=lambda msg: print(msg, file=sys.stderr, flush=True),
            emit=lambda row: print(" | ".join(str(row[c]) for c in COLUMNS), flush=True))
    print("load average %.2f %.2f %.2f" % os.getloadavg(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
