"""Benchmark: scoring every training pair with ECIF against one leave-out retraining.

    python -m ecif.experiments.bench                       # the default grid: n in {1k, 4k, 16k}
    python -m ecif.experiments.bench --n 1000 --batch 256  # one configuration

For each configuration (``n`` pairs, fixed batching of ``batch`` pairs or one full batch) on
synthetic frozen features of CLIP-like width (``--dim`` 512, embedding width 256, LoRA rank 8
on both projections, float64), it measures in the same process run:

* ``fit_s``: the base fit ``theta_hat`` (truncated Newton to ``gtol``), not part of the ratio;
* ``solve_s``: one CG solve ``h = (H + mu I)^-1 grad L_val``;
* ``score_s``: the all-pairs directional pass giving ``IS(k)`` for every pair and all four
  variants (positive, negative, ecif, newton) at once;
* ``retrain_s``: one leave-one-out retraining warm-started from ``theta_hat`` to the same
  ``gtol``, the cheapest possible ground truth for a single pair; ``retrain_grad0`` is the
  gradient norm of ``L_{-k}`` at ``theta_hat`` where it starts.
* ``ratio``: ``retrain_s / (solve_s + score_s)``, how many all-pairs ECIF scorings fit in one
  retraining of a single pair;
* ``speedup_vs_loo_all``: ``n * retrain_s / (solve_s + score_s)``, ECIF for every pair against
  leave-one-out retraining of every pair;
* ``hvp_s`` / ``hvp_autograd_s``: one Hessian-vector product at ``theta_hat``, the structured
  closed form used by every CG solve against double backward through the loss (median of 3);
* ``peak_rss_gib``: the process's peak resident memory (each configuration runs in its own
  subprocess so the peaks do not mix).

Tolerances: the fit and the retraining go to ``gtol = 1e-9`` by default, the standard of every
leave-out ground truth in the kit (the default of ``retraining.retrain``, the LOO tests, the pipeline);
the retraining starts from ``retrain_grad0``. ``--gtol 1e-6`` measures the cheaper, looser
retraining (fewer Newton steps; the CG solve of the influence is unchanged at ``rtol = 1e-6``).

Ratios are measured in one run on one machine; absolute seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

__all__ = ["run_one", "main"]


def run_one(n: int, batch: int | None, dim: int = 512, width: int = 256, rank: int = 8, lam: float = 1.0,
            gtol: float = 1e-9, threads: int = 2, seed: int = 0) -> dict:
    """Measure one configuration; returns a dict of timings (seconds), ratio and peak memory."""
    from ecif.core.batching import BatchingProtocol
    from ecif.core.evaluate import validation_gradient
    from ecif.core.fit import fit
    from ecif.core.heads import LoRAHeads
    from ecif.core.influence import ECIF
    from ecif.core.objective import ContrastiveObjective
    from ecif.data.synthetic import synthetic_pairs
    from ecif.experiments.retraining import retrain

    torch.set_num_threads(threads)
    d = synthetic_pairs(n, n_val=1000, d_img=dim, d_txt=dim, width=width, n_classes=20, latent=32,
                        shuffle_rate=0.1, seed=seed)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=rank, seed=seed)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch, seed), lam=lam)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(1000, batch, seed + 1), lam=0.0)

    t0 = time.perf_counter()
    res = fit(obj, gtol=gtol, method="newton-cg")
    fit_s = time.perf_counter() - t0

    g_val = validation_gradient(val, res.theta)
    eng = ECIF(obj, res.theta, solver="cg", damping=0.0, rtol=1e-6)
    t0 = time.perf_counter()
    h = eng.solver.solve(g_val)
    solve_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    terms = obj.directional_terms(res.theta, h)
    scores = {"positive": terms["pos"] / n, "negative": terms["neg"] / n,
              "ecif": (terms["pos"] + terms["neg"]) / n, "newton": (terms["pos"] + terms["negexact"]) / n}
    score_s = time.perf_counter() - t0
    assert all(torch.isfinite(s).all() for s in scores.values())

    hvp_s, hvp_autograd_s = _time_hvps(obj, res.theta)

    k = int(np.flatnonzero(d.misaligned)[0])
    retrain_grad0 = float(obj.without([k]).gradient(res.theta).norm())
    t0 = time.perf_counter()
    refit = retrain(obj, res.theta, [k], gtol=gtol, max_iter=100, method="newton-cg")
    retrain_s = time.perf_counter() - t0

    return {
        "n": n,
        "batch": "full" if batch is None else batch,
        "params": param.n_params,
        "fit_s": round(fit_s, 2),
        "fit_grad_norm": float(f"{res.grad_norm:.2e}"),
        "fit_converged": res.converged,
        "cg_iterations": eng.solver.report.get("iterations"),
        "solve_s": round(solve_s, 2),
        "score_s": round(score_s, 3),
        "ecif_all_pairs_s": round(solve_s + score_s, 2),
        "retrain_s": round(retrain_s, 2),
        "retrain_grad0": float(f"{retrain_grad0:.2e}"),
        "retrain_grad_norm": float(f"{refit.grad_norm:.2e}"),
        "hvp_s": round(hvp_s, 3),
        "hvp_autograd_s": round(hvp_autograd_s, 3),
        "retrain_converged": refit.converged,
        "ratio": round(retrain_s / (solve_s + score_s), 2),
        "speedup_vs_loo_all": round(n * retrain_s / (solve_s + score_s)),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _time_hvps(obj, theta, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one structured HVP and one double-backward HVP, interleaved."""
    v = torch.randn(obj.n_params, generator=torch.Generator(device="cpu").manual_seed(0), dtype=torch.float64,
                    device="cpu").to(theta.device)
    times = {"hvp": [], "hvp_autograd": []}
    for _ in range(repeats):
        for name in times:
            t0 = time.perf_counter()
            getattr(obj, name)(theta, v)
            times[name].append(time.perf_counter() - t0)
    return float(np.median(times["hvp"])), float(np.median(times["hvp_autograd"]))


DEFAULT_GRID = [(1000, 256), (1000, None), (4000, 256), (4000, None), (16000, 256)]


def _table(rows: list[dict]) -> str:
    cols = ["n", "batch", "params", "fit_s", "cg_iterations", "solve_s", "score_s", "ecif_all_pairs_s",
            "retrain_s", "ratio", "speedup_vs_loo_all", "hvp_s", "hvp_autograd_s", "peak_rss_gib",
            "retrain_grad0", "retrain_grad_norm", "fit_converged", "retrain_converged"]
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols}
    line = " | ".join(c.rjust(widths[c]) for c in cols)
    out = [line, "-" * len(line)]
    out += [" | ".join(str(r.get(c)).rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, help="one configuration: number of pairs")
    ap.add_argument("--batch", type=int, default=256, help="batch size (0 = one full batch)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gtol", type=float, default=1e-9, help="gradient norm of the fit and the retraining")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by the grid)")
    args = ap.parse_args(argv)
    if args.n is not None:
        row = run_one(args.n, args.batch or None, args.dim, args.width, args.rank, gtol=args.gtol,
                      threads=args.threads)
        print(json.dumps(row) if args.json else _table([row]), flush=True)
        return
    rows = []
    for n, batch in DEFAULT_GRID:
        cmd = [sys.executable, "-m", "ecif.experiments.bench", "--n", str(n), "--batch", str(batch or 0), "--dim",
               str(args.dim), "--width", str(args.width), "--rank", str(args.rank), "--threads",
               str(args.threads), "--gtol", str(args.gtol), "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"n={n} batch={batch}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
