"""Leave-one-out ground truth, serial against a Dask LocalCluster, measured in one run.

    PYTHONPATH=. python benchmarks/loo_distributed.py                  # 40 pairs, serial vs local:2
    PYTHONPATH=. python benchmarks/loo_distributed.py --pairs 80 --dim 256 --schedulers null local:2 local:4
    ECIF_DASK_SCHEDULER= PYTHONPATH=. python benchmarks/loo_distributed.py --schedulers null tcp://host:8786

The problem is synthetic at about the pipeline's default size (n = 1000 train pairs, fixed
batches of 64, LoRA rank 1, lam 0.1; ``--dim`` is the feature width, CLIP's would be 512).
Each scheduler runs the same leave-one-out refits as stage ``loo``
(``retraining.loo_val_changes``: warm start, the dense influence solver as preconditioner,
gtol 1e-9, torch threads 1 per refit) and prints one row as soon as it is done: wall time
(client start excluded, and printed apart), the refits' own summed seconds, and the speed-up
against the first row. The last lines say whether every table is identical to the first
(``np.array_equal`` on every column but ``seconds``) and the load average before and after, so a
busy machine can be told from a slow cluster. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecif.core.batching import BatchingProtocol  # noqa: E402
from ecif.core.fit import fit  # noqa: E402
from ecif.core.heads import LoRAHeads  # noqa: E402
from ecif.core.influence import ECIF  # noqa: E402
from ecif.core.objective import ContrastiveObjective  # noqa: E402
from ecif.data.synthetic import synthetic_pairs  # noqa: E402
from ecif.experiments import distributed  # noqa: E402
from ecif.experiments.retraining import loo_val_changes, sample_loo_pairs  # noqa: E402


def build(n: int, dim: int, width: int, rank: int, batch: int, lam: float, seed: int):
    d = synthetic_pairs(n, n_val=500, d_img=dim, d_txt=dim, width=width, n_classes=10, latent=16,
                        shuffle_rate=0.2, seed=seed)
    param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=rank, seed=seed)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch, seed), lam=lam)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(500, batch, seed + 1))
    res = fit(obj, gtol=1e-9, method="newton-cg")
    assert res.converged, res.summary()
    engine = ECIF(obj, res.theta, solver="dense", damping=0.0)
    return obj, val, res.theta, engine.solver, np.asarray(d.misaligned, dtype=bool)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedulers", nargs="+", default=["null", "local:2"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    load0 = os.getloadavg()
    print(f"cores {os.cpu_count()}, load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    t0 = time.perf_counter()
    obj, val, theta, solver, mask = build(args.n, args.dim, args.width, args.rank, args.batch, args.lam, args.seed)
    pairs = sample_loo_pairs(mask, args.pairs, args.pairs // 4, args.seed)
    print(f"problem: n {args.n}, dim {args.dim}, width {args.width}, rank {args.rank}, batch {args.batch}, "
          f"P {obj.n_params}; fit + Hessian {time.perf_counter() - t0:.1f} s; {len(pairs)} refits per row", flush=True)
    print(f"{'scheduler':>22} {'workers':>7} {'start_s':>8} {'wall_s':>8} {'refits_s':>9} {'speedup':>8}", flush=True)

    tables, first_wall = [], None
    for name in args.schedulers:
        t0 = time.perf_counter()
        client = distributed.connect(name, env=False)
        start_s = time.perf_counter() - t0
        workers = len(client.scheduler_info()["workers"]) if client is not None else 1
        try:
            t0 = time.perf_counter()
            table = loo_val_changes(obj, theta, val, pairs, preconditioner=solver, client=client, progress=False)
            wall = time.perf_counter() - t0
        finally:
            distributed.close(client)
        first_wall = wall if first_wall is None else first_wall
        tables.append(table)
        print(f"{name:>22} {workers:>7} {start_s:>8.2f} {wall:>8.2f} {table['seconds'].sum():>9.2f} "
              f"{first_wall / wall:>8.2f}", flush=True)

    cols = [c for c in tables[0].columns if c != "seconds"]
    same = all(np.array_equal(t[c].to_numpy(), tables[0][c].to_numpy()) for t in tables[1:] for c in cols)
    print(f"identical to the first row's table (every column but seconds): {same}")
    load1 = os.getloadavg()
    print(f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
          f"({'busy' if max(load0[0], load1[0]) > 0.5 * (os.cpu_count() or 1) else 'idle'} machine)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
