"""Detection and cleaning with the adapters on the projections (head mode) and inside the encoder
(block mode), one run on the pipeline's digits setting or the cleaning stage's shapes_swap one.

    .venv/bin/python benchmarks/block_mode_cleaning.py head blocks [--out cleaning_modes.json]
    .venv/bin/python benchmarks/block_mode_cleaning.py head blocks --setting shapes_swap --n-train 40

``--setting shapes_swap``: the cleaning stage's own setting (``shapes`` with ``artifacts/encoder_shapes``,
a systematic swap of the shape word in 20 % of the train captions, noise seed 0), the first
``--n-train`` train pairs (block-mode fits on shapes are slow), the same ``lam`` 0.3 in both
modes, the test set's shapes as zero-shot classes.

The data, corruption (20 % shuffled captions, noise seed 0), encoder (``artifacts/encoder``) and
fit settings of stages inject and finetune, with ``lam`` 0.3 in both modes (the smallest block
mode allows), one block per tower, ``qv``, rank 1. Per mode: the fit, every pair scored by
``ecif``, ``positive``, ``newton``, ``cosine`` and ``pair_loss`` (detection AUROC and
precision@k, k = number misaligned), then Table 1 of the cleaning stage at fraction 0.1
(:func:`ecif.experiments.cleaning.cleaning_table`: each method's top 10 % removed and the model
refitted warm, random deletions with seeds 0-2, the oracle and the clean fit). Self-influence is
left out (its n solves are the detect stage's longest part in block mode). Prints each table as
it is measured and writes everything to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from ecif.core.evaluate import validation_gradient
from ecif.experiments import cleaning, detection
from ecif.kit.problem import FitSettings, fit_corrupted

METHODS = ("ecif", "positive", "newton", "cosine", "pair_loss")


def run(mode: str, setting: str = "digits", n_train: int | None = None) -> dict:
    t0 = time.perf_counter()
    settings = FitSettings(lam=0.3, mode=mode, blocks=1, targets=("qv",), n_train=n_train)
    with tempfile.TemporaryDirectory() as fd:
        if setting == "digits":
            fitted, info = fit_corrupted("digits", "data", "artifacts/encoder", fd, kind="shuffle", rate=0.2,
                                         noise_seed=0, settings=settings)
        else:
            fitted, info = fit_corrupted("shapes", "data", "artifacts/encoder_shapes", fd, kind="attribute_swap",
                                         rate=0.2, noise_seed=0, systematic=True, attribute="shape", settings=settings)
    p, th = fitted.problem, fitted.theta_hat
    print(mode, "fit", info, flush=True)
    engine = fitted.engine()
    t1 = time.perf_counter()
    scores = detection.detection_scores(engine, validation_gradient(p.val, th), methods=METHODS)
    score_s = time.perf_counter() - t1
    det = detection.detection_table(scores, p.mask).set_index("method")
    print(mode, "detection\n", det.round(3), flush=True)
    t1 = time.perf_counter()
    tab = cleaning.cleaning_table(p.objective, th, scores, p.test_set, fraction=0.1, mask=p.mask, random_seeds=(0, 1, 2),
                                  preconditioner=engine.solver, clean_objective=p.clean_objective())
    cleaning_s = time.perf_counter() - t1
    print(mode, "cleaning\n", tab.round(4).to_string(), flush=True)
    return {"n": p.n, "P": p.param.n_params, "info": info, "score_s": score_s, "cleaning_s": cleaning_s,
            "total_s": time.perf_counter() - t0, "detection": det[["auroc", "precision_at_k"]].to_dict(),
            "cleaning": tab.to_dict(orient="list")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modes", nargs="+", choices=("head", "blocks"))
    ap.add_argument("--out", default="cleaning_modes.json")
    ap.add_argument("--setting", choices=("digits", "shapes_swap"), default="digits")
    ap.add_argument("--n-train", type=int, default=None, help="keep the first n train pairs (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for mode in args.modes:
        out[mode] = run(mode, args.setting, args.n_train)
        with open(args.out, "w") as f:
            json.dump(out, f, default=float, indent=1)


if __name__ == "__main__":
    main()
