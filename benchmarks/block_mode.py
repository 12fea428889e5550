"""What block mode costs: LoRA inside the encoder's last blocks against the head mode, one run.

    .venv/bin/python benchmarks/block_mode.py [--encoder-dir artifacts/encoder] [--n 359]

Needs the embedded encoder (``dvc repro encoder`` writes ``artifacts/encoder``). On the digits
train split with 25 % shuffled captions (``lam`` 0.3, batch 64, rank 1) each row measures, in a
fresh process (so that the peak memory is the row's own):

- ``P``: trainable parameters; ``n``: train pairs;
- ``fit_s``: the base fit from ``theta0`` to gradient norm 1e-9 (Newton-CG);
- ``score_s``: every pair scored (CG solve of the validation gradient + the all-pairs
  directional pass), ``cg_iters`` its iterations;
- ``warm_s``: one leave-one-out retraining from ``theta_hat``; ``cold_s``: the same from
  ``theta0`` (the paper's "retrain");
- ``score/warm``, ``score/cold``: the ratios, measured in the same process;
- ``peak_GiB``: the process's peak resident memory.

With ``--projected 4,16,64`` each row is followed, as each is measured, by one line per ``k``
of :class:`ecif.core.projected.ProjectedInfluence` (Gauss-Newton curvature, the same ``lam``):
``K`` its projected dimension, ``proj_s`` its time (forward passes, curvature, solve, scores),
``proj/score`` the ratio to the exact CG scoring above, and its error against the exact scores
of the ``ecif`` and ``newton`` variants: Pearson, Spearman and relative L2 of the score vector.
``--rank`` sets the LoRA rank of every adapter (default 1).

Rows: ``blocks 0`` (the adapters on the final projections only: the head mode, same numbers),
then one and two adapted blocks per tower with ``qv`` or ``attn`` targets. Each row is printed as
soon as it is measured, with the load average before and after (a busy machine makes every
time larger; the ratios move less).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

ROWS = [(0, ("qv",)), (1, ("qv",)), (1, ("attn",)), (2, ("qv",))]


def _errors(got, exact) -> dict:
    """Pearson, Spearman and relative L2 of a score vector against the exact one."""
    import numpy as np
    from scipy.stats import spearmanr

    a, b = got.numpy(), exact.numpy()
    return {"pearson": float(np.corrcoef(a, b)[0, 1]), "spearman": float(spearmanr(a, b)[0]),
            "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def _row(encoder_dir: str, n: int, blocks: int, targets: tuple, queue, rank: int = 1, projected=()) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from ecif.core.batching import BatchingProtocol
    from ecif.core.blocks import BlockLoRA
    from ecif.core.evaluate import validation_gradient
    from ecif.core.fit import fit
    from ecif.core.influence import ECIF
    from ecif.core.objective import ContrastiveObjective
    from ecif.experiments.block_features import extract_block_features
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_default
    from ecif.data.noise import inject

    model, tok, _ = load_default(encoder_dir)
    ds = load_dataset("digits", root="data")
    corruption = inject(ds["train"], "shuffle", 0.25, seed=0, spec=ds.spec)
    f = extract_block_features(model, tok, ds, blocks, corruption=corruption, splits=("train", "val"))
    img, txt = f["suffix"]
    param = BlockLoRA(img, txt, float(f["log_logit_scale"]), rank=rank, targets=targets, seed=0)
    t = lambda a: torch.as_tensor(np.asarray(a)[:n], dtype=torch.float64)  # noqa: E731
    obj = ContrastiveObjective(param, t(f["x_train"]), t(f["y_train"]), BatchingProtocol.from_seed(min(n, len(f["x_train"])), 64, 0), lam=0.3)
    val = ContrastiveObjective(param, t(f["x_val"]), t(f["y_val"]), BatchingProtocol.from_seed(min(n, len(f["x_val"])), 64, 1))
    t0 = time.perf_counter()
    res = fit(obj, gtol=1e-9, method="newton-cg")
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng = ECIF(obj, res.theta, solver="cg")
    g_val = validation_gradient(val, res.theta)
    exact = eng.influence_scores(g_val)
    score_s = time.perf_counter() - t0
    for k in projected:
        from ecif.core.projected import ProjectedInfluence

        t0 = time.perf_counter()
        pi = ProjectedInfluence(obj, res.theta, k=k, curvature="gauss_newton")
        got = pi.influence_scores(g_val)
        proj_s = time.perf_counter() - t0
        queue.put({"kind": "projected", "k": k, "K": pi.dim, "P": param.n_params, "proj_s": proj_s,
                   "score_s": score_s, **{f"{v}_{m}": e for v in ("ecif", "newton")
                                           for m, e in _errors(got[v], exact[v]).items()}})
    t0 = time.perf_counter()
    warm = fit(obj.without([0]), theta_init=res.theta, gtol=1e-9, method="newton-cg")
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold = fit(obj.without([0]), gtol=1e-9, method="newton-cg")
    cold_s = time.perf_counter() - t0
    queue.put({"kind": "row", "blocks": blocks, "targets": "+".join(targets), "P": param.n_params, "n": obj.n,
               "fit_s": fit_s, "converged": bool(res.converged and warm.converged and cold.converged),
               "score_s": score_s, "cg_iters": eng.solver.report.get("iterations"), "warm_s": warm_s,
               "cold_s": cold_s, "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def _next(q, proc) -> dict:
    """The row process's next message; stops the benchmark when the process died without one."""
    import queue

    while True:
        try:
            return q.get(timeout=5)
        except queue.Empty:
            if not proc.is_alive():
                raise SystemExit(f"the row process exited with code {proc.exitcode} (its traceback is above)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder-dir", default="artifacts/encoder")
    p.add_argument("--n", type=int, default=359, help="train pairs (digits has 359)")
    p.add_argument("--rank", type=int, default=1, help="LoRA rank of every adapter")
    p.add_argument("--projected", default="", help="comma-separated k of the projected option, e.g. 4,16,64")
    p.add_argument("--rows", default="", help="comma-separated row numbers to run (1-based), default all")
    args = p.parse_args(argv)
    projected = tuple(int(k) for k in args.projected.split(",") if k)
    rows = [ROWS[int(i) - 1] for i in args.rows.split(",") if i] or ROWS
    print("load average %.2f %.2f %.2f (before)" % os.getloadavg(), flush=True)
    head = f"{'blocks':>6} {'targets':>7} {'P':>6} {'n':>4} {'fit_s':>7} {'score_s':>8} {'cg_iters':>8} " \
           f"{'warm_s':>7} {'cold_s':>7} {'score/warm':>10} {'score/cold':>10} {'peak_GiB':>8} conv"
    print(head, flush=True)
    ctx = mp.get_context("spawn")
    for i, (blocks, targets) in enumerate(rows, 1):
        print(f"[row {i}/{len(rows)}] blocks {blocks}, targets {'+'.join(targets)} ...", file=sys.stderr, flush=True)
        q = ctx.Queue()
        proc = ctx.Process(target=_row, args=(args.encoder_dir, args.n, blocks, targets, q, args.rank, projected))
        proc.start()
        while (r := _next(q, proc))["kind"] == "projected":  # the projected lines come first, as measured
            print(f"  projected k {r['k']:>4}: K {r['K']:>5} of P {r['P']:>6}, proj_s {r['proj_s']:>7.1f}, "
                  f"proj/score {r['proj_s'] / r['score_s']:>5.2f}; ecif Pearson {r['ecif_pearson']:.4f} Spearman "
                  f"{r['ecif_spearman']:.4f} rel. L2 {r['ecif_rel_l2']:.3f}; newton Pearson {r['newton_pearson']:.4f} "
                  f"Spearman {r['newton_spearman']:.4f} rel. L2 {r['newton_rel_l2']:.3f}", flush=True)
        proc.join()
        print(f"{r['blocks']:>6} {r['targets']:>7} {r['P']:>6} {r['n']:>4} {r['fit_s']:>7.1f} {r['score_s']:>8.1f} "
              f"{r['cg_iters']!s:>8} {r['warm_s']:>7.1f} {r['cold_s']:>7.1f} {r['score_s'] / r['warm_s']:>10.2f} "
              f"{r['score_s'] / r['cold_s']:>10.2f} {r['peak_GiB']:>8.2f} {r['converged']}", flush=True)
    print("load average %.2f %.2f %.2f (after)" % os.getloadavg(), flush=True)


if __name__ == "__main__":
    main()
