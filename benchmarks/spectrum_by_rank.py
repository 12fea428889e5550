"""The ends of the Hessian's spectrum at the optimum, per LoRA rank, on the bench's problem.

    .venv/bin/python benchmarks/spectrum_by_rank.py                  # n = 16000, ranks 2 and 128
    .venv/bin/python benchmarks/spectrum_by_rank.py --ranks 2 8 32 128 --n 4000

Why CG needs fewer products for a larger adapter (README, "How far it goes", the P table): the
number of CG iterations follows the square root of the condition number ``lambda_max /
lambda_min`` of ``H`` at ``theta_hat``. For each rank it fits ``theta_hat`` as the bench does
(Newton-CG to ``|grad| <= 1e-9`` from a subsample start, float32 products in the steps) on the
bench's synthetic problem (512-d features, embedding width 256, lam = 1, batches of 256), then
estimates the smallest and largest eigenvalue by Lanczos (``--iters`` float32 Hessian-vector
products; the smallest found is >= the true smallest, the largest <= the true largest). One row
per rank, printed when it is done: rank, P, lambda_min, lambda_max, their ratio, seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from ecif.core.solvers import lanczos_extremes

from bench_problem import base_fit, build  # benchmarks/bench_problem.py, next to this script


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 128])
    ap.add_argument("--iters", type=int, default=80, help="Lanczos steps (Hessian-vector products)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if min(args.ranks) < 1:
        ap.error(f"ranks must be >= 1, got {args.ranks}.")
    torch.set_num_threads(args.threads)
    data = None
    print("rank | P | lambda_min | lambda_max | condition | seconds", flush=True)
    for r in args.ranks:
        t0 = time.perf_counter()
        prob = build(args.n, rank=r, data=data)
        data, obj = prob.data, prob.objective
        res = base_fit(prob)
        lo, hi = lanczos_extremes(lambda v: obj.hvp(res.theta, v, "float32"), obj.n_params, iters=args.iters)
        print(f"{r} | {obj.n_params} | {lo:.3g} | {hi:.3g} | {hi / lo:.3g} | {time.perf_counter() - t0:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
