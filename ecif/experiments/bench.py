"""Benchmark: scoring every training pair with ECIF against one cold and one warm retraining.

    python -m ecif.experiments.bench                        # the default grid, n from 1k to 100k
    python -m ecif.experiments.bench --n 1000 4000 16000 100000  # these n, batch 256, one row each
    python -m ecif.experiments.bench --n 1000 --batch 0     # one configuration, one full batch
    python -m ecif.experiments.bench --n 4000 16000 --precision float64 mixed --no-retrain
                                                            # float64 against mixed-precision solves
    python -m ecif.experiments.bench --n 1000 4000 --csv bench.csv   # the rows also as CSV

For each configuration (``n`` pairs, fixed batching of ``batch`` pairs or one full batch) on
synthetic frozen features of CLIP-like width (``--dim`` 512, embedding width 256, LoRA rank 8
on both projections, float64), it measures in the same process run:

* ``fit_s``: the base fit ``theta_hat`` (Newton-CG to ``gtol``, started from a fit of a
  subsample of the batches when ``n > 4 * --subsample``; its CG steps use float32 products with
  ``--fit-precision mixed``, the default, and the spectral preconditioner of the solve below
  where there is one), not part of the ratios;
* ``solve_s``: one CG solve ``h = (H + mu I)^-1 grad L_val`` to ``rtol = 1e-6``, including the
  build of its preconditioner where there is one (``precond_pairs`` pairs, ``precond_s``
  seconds; :func:`default_precondition`); ``cg_iterations`` full Hessian-vector products;
* ``score_s``: the all-pairs directional pass giving ``IS(k)`` for every pair and all four
  variants (positive, negative, ecif, newton) at once; ``ecif_all_pairs_s = solve_s + score_s``;
* ``retrain_s``: one leave-one-out retraining warm-started from ``theta_hat`` to the same
  ``gtol`` (Newton-CG with the base fit's products and preconditioner), the cheapest possible
  ground truth for a single pair; ``retrain_grad0`` is the
  gradient norm of ``L_{-k}`` at ``theta_hat`` where it starts;
* ``cold_retrain_s``: the same leave-one-out retraining from ``theta0`` (the paper's
  "retrain"), with the base fit's procedure (same subsample start);
* ``score_over_warm`` / ``score_over_cold``: ``ecif_all_pairs_s`` over one warm / one cold
  retraining (targets: <= 0.5 and <= 0.05); ``ratio``: ``retrain_s / ecif_all_pairs_s``;
* ``speedup_vs_loo_all``: ``n * retrain_s / ecif_all_pairs_s``, ECIF for every pair against
  warm leave-one-out retraining of every pair;
* ``hvp_s`` / ``hvp_autograd_s``: one Hessian-vector product at ``theta_hat``, the structured
  closed form used by every CG solve against double backward through the loss (median of 3;
  the latter only up to ``n = 20000``, its graph grows with ``n``);
* ``peak_rss_gib``: the process's peak resident memory (each configuration runs in its own
  subprocess so the peaks do not mix).

``--precision`` (default ``mixed``) picks how the influence is solved; ``--precision mixed
float64`` solves and scores once per precision after the one base fit (the first precision gives
the main row; ``mixed`` is CG on float32 Hessian-vector products refined
with float64 residuals to the same ``rtol``, docs/math.md §15) and prints a second table, one
row per configuration and precision: ``f32_products`` / ``f64_products`` (Hessian-vector
products of each precision in the solve), ``solve_s``, ``score_s``, ``hvp_s`` (one product of
that precision, median of 3), ``solve_speedup`` (the first precision's ``solve_s`` over this
one's) and ``score_rel_diff`` (max abs difference of the all-pairs ``ecif`` scores from the
first precision's, over their max abs). ``--no-retrain`` skips the two retrainings (their
columns are empty), for comparisons of the solve alone.

Each row is printed as soon as it is measured; fit steps, CG iterations and the stage being
measured go to stderr (``--quiet`` silences them).

Tolerances: the fit and the retraining go to ``gtol = 1e-9`` by default, the standard of every
leave-out ground truth in the kit (the default of ``retraining.retrain``, the LOO tests, the pipeline);
the retraining starts from ``retrain_grad0``. ``--gtol 1e-6`` measures the cheaper, looser
retraining (fewer Newton steps; the CG solve of the influence is unchanged at ``rtol = 1e-6``).

Ratios are measured in one run on one machine; absolute seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BenchProblem", "build_problem", "run_one", "main", "write_csv"]


@dataclass
class BenchProblem:
    """The problem one benchmark row measures."""

    data: object  # the synthetic pairs (features, misaligned mask, base projections)
    param: object  # the LoRAHeads parametrization
    objective: object  # ContrastiveObjective: L over the n train pairs, regulariser lam
    validation: object  # ContrastiveObjective: the validation loss over 1,000 pairs (lam = 0)


def build_problem(n: int, batch: int | None = 256, dim: int = 512, width: int = 256, rank: int = 8,
                  lam: float = 1.0, seed: int = 0, data=None) -> BenchProblem:
    """The bench's problem: synthetic frozen features of CLIP-like width (``dim``-d image and
    text features, embedding width ``width``, 20 classes, 10 % shuffled pairs, seeded), LoRA
    heads of ``rank`` on both projections, fixed batches of ``batch`` pairs (``None``: one full
    batch), regulariser ``lam``, and a validation set of 1,000 pairs. ``data``: reuse the
    synthetic pairs of an earlier call with the same ``n``, ``dim``, ``width`` and ``seed``
    (e.g. for a sweep of ranks). Also used by the scripts under ``benchmarks/``, so they study
    the same problem as the bench."""
    from ecif.core.batching import BatchingProtocol
    from ecif.core.heads import LoRAHeads
    from ecif.core.objective import ContrastiveObjective
    from ecif.data.synthetic import synthetic_pairs

    d = data if data is not None else synthetic_pairs(n, n_val=1000, d_img=dim, d_txt=dim, width=width,
                                                      n_classes=20, latent=32, shuffle_rate=0.1, seed=seed)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=rank, seed=seed)
    return BenchProblem(
        data=d, param=param,
        objective=ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch, seed), lam=lam),
        validation=ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(1000, batch, seed + 1),
                                        lam=0.0))


def run_one(n: int, batch: int | None, dim: int = 512, width: int = 256, rank: int = 8, lam: float = 1.0,
            gtol: float = 1e-9, threads: int = 2, seed: int = 0, subsample: int | None = 4000,
            precondition: int | None = None, progress: bool = True, precisions=("float64",),
            retrain: bool = True, fit_precision: str = "mixed") -> dict:
    """Measure one configuration; returns a dict of timings (seconds), ratios and peak memory.

    ``subsample``: the fit's subsample start (:func:`ecif.core.fit.fit`), used by the base fit
    and the cold retraining alike; ``precondition``: pairs of the subsample whose Hessian
    preconditions the CG solve (``None``: :func:`default_precondition`, ``0``: plain CG).
    ``progress``: fit steps and CG iterations on stderr. ``precisions``: solve and score once
    with each (``"float64"``, ``"mixed"``); the main columns are the first one's, and
    ``"by_precision"`` holds one dict per precision (see :data:`PRECISION_COLUMNS`).
    ``retrain=False``: skip the two retrainings (their columns and ratios are ``None``).
    ``fit_precision``: the base fit's and the cold retraining's Newton-CG products
    (:func:`ecif.core.fit.fit`'s ``precision``)."""
    from ecif.core.evaluate import validation_gradient
    from ecif.core.fit import fit
    from ecif.core.influence import ECIF
    from ecif.experiments.retraining import retrain as retrain_fit

    torch.set_num_threads(threads)
    precondition = default_precondition(n) if precondition is None else (precondition or None)

    def say(msg):
        if progress:
            print(f"[n={n}] {msg}", file=sys.stderr, flush=True)

    prob = build_problem(n, batch, dim=dim, width=width, rank=rank, lam=lam, seed=seed)
    d, param, obj, val = prob.data, prob.param, prob.objective, prob.validation

    say("base fit")
    t0 = time.perf_counter()
    res = fit(obj, gtol=gtol, method="newton-cg", progress=progress, subsample=subsample, precondition=precondition,
              precision=fit_precision)
    fit_s = time.perf_counter() - t0
    say(f"base fit: {fit_s:.1f} s, |grad| {res.grad_norm:.1e}")

    g_val = validation_gradient(val, res.theta)
    by_precision = []
    for precision in precisions:
        say(f"influence solve, precision {precision} "
            f"({'plain CG' if precondition is None else f'CG preconditioned on {precondition} pairs'})")
        t0 = time.perf_counter()
        eng = ECIF(obj, res.theta, solver="cg", damping=0.0, rtol=1e-6, precondition=precondition,
                   progress=progress, precision=precision)
        precond_s = time.perf_counter() - t0
        h = eng.solver.solve(g_val)
        solve_s = time.perf_counter() - t0  # preconditioner build included
        rep = eng.solver.report
        f32, f64 = (rep["float32_products"], rep["float64_products"]) if precision == "mixed" else (0, rep["products"])
        say(f"solve: {solve_s:.1f} s ({precond_s:.1f} s preconditioner), {f32} float32 and {f64} float64 products")
        say("all-pairs directional pass")
        t0 = time.perf_counter()
        terms = obj.directional_terms(res.theta, h)
        scores = {"positive": terms["pos"] / n, "negative": terms["neg"] / n,
                  "ecif": (terms["pos"] + terms["neg"]) / n, "newton": (terms["pos"] + terms["negexact"]) / n}
        score_s = time.perf_counter() - t0
        assert all(torch.isfinite(s).all() for s in scores.values())
        say(f"directional pass: {score_s:.2f} s; all pairs scored in {solve_s + score_s:.1f} s")
        first = by_precision[0] if by_precision else None
        ref = scores["ecif"] if first is None else first["_ecif"]
        by_precision.append({
            "n": n, "batch": "full" if batch is None else batch, "precision": precision,
            "cg_iterations": rep.get("iterations"), "f32_products": f32, "f64_products": f64,
            "relative_residual": float(f"{rep.get('relative_residual'):.2e}"), "precond_s": round(precond_s, 2),
            "solve_s": round(solve_s, 2), "score_s": round(score_s, 3), "ecif_all_pairs_s": round(solve_s + score_s, 2),
            "hvp_s": round(_time_hvps(obj, res.theta, autograd=False,
                                      precision="float32" if precision == "mixed" else "float64")[0], 3),
            "solve_speedup": round((solve_s if first is None else first["solve_s"]) / solve_s, 2),
            "score_rel_diff": float(f"{float((scores['ecif'] - ref).abs().max() / ref.abs().max()):.2e}"),
            "_ecif": scores["ecif"],
        })
    for row in by_precision:
        del row["_ecif"]
    main_row = by_precision[0]
    precond_s, solve_s, score_s = main_row["precond_s"], main_row["solve_s"], main_row["score_s"]
    ecif_s = solve_s + score_s

    say("HVP timings")
    hvp_s, hvp_autograd_s = _time_hvps(obj, res.theta, autograd=n <= AUTOGRAD_HVP_MAX_N)

    k = int(np.flatnonzero(d.misaligned)[0])
    retrain_grad0 = float(obj.without([k]).gradient(res.theta).norm())
    retrain_s = cold_s = refit = cold = None
    if retrain:
        say("one warm retraining")
        t0 = time.perf_counter()
        refit = retrain_fit(obj, res.theta, [k], gtol=gtol, max_iter=100, method="newton-cg", progress=progress,
                            precondition=precondition, precision=fit_precision)
        retrain_s = time.perf_counter() - t0
        say(f"warm retraining: {retrain_s:.1f} s; one cold retraining")
        t0 = time.perf_counter()
        cold = retrain_fit(obj, res.theta, [k], init="theta0", gtol=gtol, max_iter=100, method="newton-cg",
                           subsample=subsample, progress=progress, precondition=precondition,
                           precision=fit_precision)
        cold_s = time.perf_counter() - t0

    def rnd(x, digits):
        return None if x is None else round(x, digits)

    return {
        "n": n,
        "batch": "full" if batch is None else batch,
        "params": param.n_params,
        "fit_s": round(fit_s, 2),
        "fit_grad_norm": float(f"{res.grad_norm:.2e}"),
        "fit_converged": res.converged,
        "precond_pairs": precondition or 0,
        "precond_s": precond_s,
        "cg_iterations": main_row["cg_iterations"],
        "solve_s": solve_s,
        "score_s": score_s,
        "ecif_all_pairs_s": round(ecif_s, 2),
        "retrain_s": rnd(retrain_s, 2),
        "cold_retrain_s": rnd(cold_s, 2),
        "score_over_cold": None if cold_s is None else round(ecif_s / cold_s, 3),
        "score_over_warm": None if retrain_s is None else round(ecif_s / retrain_s, 3),
        "retrain_grad0": float(f"{retrain_grad0:.2e}"),
        "retrain_grad_norm": None if refit is None else float(f"{refit.grad_norm:.2e}"),
        "cold_grad_norm": None if cold is None else float(f"{cold.grad_norm:.2e}"),
        "hvp_s": round(hvp_s, 3),
        "hvp_autograd_s": None if hvp_autograd_s is None else round(hvp_autograd_s, 3),
        "retrain_converged": None if refit is None else refit.converged,
        "cold_converged": None if cold is None else cold.converged,
        "ratio": None if retrain_s is None else round(retrain_s / ecif_s, 2),
        "speedup_vs_loo_all": None if retrain_s is None else round(n * retrain_s / ecif_s),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "by_precision": by_precision,
    }


#: Largest ``n`` whose double-backward HVP is timed (it holds the whole second-order graph).
AUTOGRAD_HVP_MAX_N = 20000


def default_precondition(n: int) -> int | None:
    """Pairs of the preconditioning subsample for ``n`` pairs: 4096 where ``n >= 32768`` (its
    150 Lanczos steps then cost less than the CG iterations they save), else ``None`` (plain CG)."""
    return 4096 if n >= 8 * 4096 else None


def _time_hvps(obj, theta, repeats: int = 3, autograd: bool = True,
               precision: str = "float64") -> tuple[float, float | None]:
    """Median seconds of one structured HVP (products in ``precision``) and one double-backward
    HVP, interleaved (the latter ``None`` with ``autograd=False``)."""
    v = torch.randn(obj.n_params, generator=torch.Generator(device="cpu").manual_seed(0), dtype=torch.float64,
                    device="cpu").to(theta.device)
    times = {"hvp": [], "hvp_autograd": []} if autograd else {"hvp": []}
    for _ in range(repeats):
        for name in times:
            t0 = time.perf_counter()
            if name == "hvp":
                obj.hvp(theta, v, precision)
            else:
                obj.hvp_autograd(theta, v)
            times[name].append(time.perf_counter() - t0)
    return float(np.median(times["hvp"])), (float(np.median(times["hvp_autograd"])) if autograd else None)


DEFAULT_GRID = [(1000, 256), (1000, None), (4000, 256), (4000, None), (16000, 256), (100000, 256)]


COLUMNS = ["n", "batch", "params", "fit_s", "precond_pairs", "precond_s", "cg_iterations", "solve_s", "score_s",
           "ecif_all_pairs_s", "retrain_s", "cold_retrain_s", "score_over_warm", "score_over_cold", "ratio",
           "speedup_vs_loo_all", "hvp_s", "hvp_autograd_s", "peak_rss_gib", "retrain_grad0",
           "retrain_grad_norm", "cold_grad_norm", "fit_converged", "retrain_converged", "cold_converged"]


#: Columns of the per-precision table (``--precision`` with more than one value).
PRECISION_COLUMNS = ["n", "batch", "precision", "cg_iterations", "f32_products", "f64_products",
                     "relative_residual", "solve_s", "score_s", "ecif_all_pairs_s", "hvp_s", "solve_speedup",
                     "score_rel_diff"]


def _table(rows: list[dict], cols: list[str] = COLUMNS) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols}
    line = " | ".join(c.rjust(widths[c]) for c in cols)
    out = [line, "-" * len(line)]
    out += [" | ".join(str(r.get(c)).rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", help="numbers of pairs (one row each; default: the grid)")
    ap.add_argument("--batch", type=int, default=256, help="batch size (0 = one full batch)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gtol", type=float, default=1e-9, help="gradient norm of the fit and the retraining")
    ap.add_argument("--subsample", type=int, default=4000,
                    help="subsample start of the base fit and the cold retraining (0 = none)")
    ap.add_argument("--precondition", type=int, default=None,
                    help="pairs whose Hessian preconditions CG (default: 4096 from n = 32768 on; 0 = plain CG)")
    ap.add_argument("--precision", nargs="+", default=["mixed"], choices=["float64", "mixed"],
                    help="solve and score with each (one base fit; the first gives the main row)")
    ap.add_argument("--no-retrain", action="store_true", help="skip the warm and cold retraining")
    ap.add_argument("--fit-precision", default="mixed", choices=["float64", "mixed"],
                    help="products of the base fit's and the cold retraining's Newton-CG steps")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by the grid)")
    ap.add_argument("--csv", metavar="PATH", help="also write the rows to this CSV file (rewritten after each "
                    "row, so a run stopped early keeps the rows it finished)")
    args = ap.parse_args(argv)
    if args.n is not None and len(args.n) == 1:
        row = run_one(args.n[0], args.batch or None, args.dim, args.width, args.rank, gtol=args.gtol,
                      threads=args.threads, subsample=args.subsample or None, precondition=args.precondition,
                      progress=not args.quiet, precisions=tuple(args.precision), retrain=not args.no_retrain,
                      fit_precision=args.fit_precision)
        print(json.dumps(row) if args.json else _tables([row]), flush=True)
        if args.csv:
            write_csv([row], args.csv)
        return
    grid = DEFAULT_GRID if args.n is None else [(n, args.batch or None) for n in args.n]
    rows = []
    for n, batch in grid:
        cmd = [sys.executable, "-m", "ecif.experiments.bench", "--n", str(n), "--batch", str(batch or 0), "--dim",
               str(args.dim), "--width", str(args.width), "--rank", str(args.rank), "--threads",
               str(args.threads), "--gtol", str(args.gtol), "--subsample", str(args.subsample), "--json"]
        if args.precondition is not None:
            cmd += ["--precondition", str(args.precondition)]
        cmd += ["--precision", *args.precision, "--fit-precision", args.fit_precision]
        cmd += ["--no-retrain"] if args.no_retrain else []
        if args.quiet:
            cmd.append("--quiet")
        # progress goes straight to our stderr; the row comes back as the last stdout line
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            print(f"n={n} batch={batch}: failed (exit {out.returncode})", file=sys.stderr, flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if args.csv:
            write_csv(rows, args.csv)
        table = _table(rows).splitlines()
        if len(rows) == 1:
            print("\n".join(table[:2]), flush=True)
        print(table[-1], flush=True)
    print()
    print(_tables(rows))


#: Columns of the CSV file (``--csv``): the main table's, with the precision of the main row.
CSV_COLUMNS = COLUMNS[:2] + ["precision"] + COLUMNS[2:]


def write_csv(rows: list[dict], path: str) -> None:
    """Write ``rows`` (dicts of :func:`run_one`) to ``path`` as CSV, one line per configuration
    with the columns :data:`CSV_COLUMNS` (``precision``: the main row's, the first of
    ``--precision``; empty cells where a column is ``None``)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            main = dict(r, precision=(r.get("by_precision") or [{}])[0].get("precision"))
            w.writerow(["" if main.get(c) is None else main.get(c) for c in CSV_COLUMNS])


def _tables(rows: list[dict]) -> str:
    """The main table, then the per-precision table when a row holds more than one precision."""
    out = _table(rows)
    per = [p for r in rows for p in r.get("by_precision", [])]
    if len(per) > len(rows):
        out += "\n\n" + _table(per, PRECISION_COLUMNS)
    return out


if __name__ == "__main__":
    main()
