"""The repair comparison on the cleaning stage's setting (systematic swap of one attribute).

For each noise seed: corrupt, encode and fit exactly as the cleaning stage does
(:func:`ecif.kit.problem.fit_corrupted` with ``kind="attribute_swap"``, ``systematic=True``),
score the train pairs with the influence engine (the ``ecif`` detection method), assemble an
:class:`ecif.experiments.repair.RepairCase` and compare the four repairs
(:func:`ecif.experiments.repair.repair_table`). The word whose association is repaired is the
swap's target value (the value written into the corrupted captions).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecif.kit.problem import FitSettings, as_tensor, fit_corrupted

__all__ = ["fix_rows", "repair_case", "repair_runs"]


def fix_rows(attributes: dict, attribute: str, values: list, source: str, target: str, n_fix: int,
             seed: int) -> np.ndarray:
    """Rows of a clean split to add as correctly captioned pairs: ``n_fix`` of them, half (rounded
    up) with ``attribute = target`` and the rest with ``attribute = source``, drawn without
    replacement from ``seed``; sorted."""
    rng = np.random.default_rng([seed, 16])
    codes = np.asarray(attributes[attribute])
    picks = []
    for value, count in ((target, (n_fix + 1) // 2), (source, n_fix // 2)):
        pool = np.flatnonzero(codes == values.index(value))
        if pool.size < count:
            raise ValueError(f"only {pool.size} clean pairs with {attribute}={value!r}; lower n_fix (now {n_fix}).")
        picks.append(rng.choice(pool, size=count, replace=False))
    return np.sort(np.concatenate(picks))


def repair_case(ds, model, tokenizer, data_root, encoder_dir, *, attribute: str, rate: float, noise_seed: int,
                settings: FitSettings, n_fix: int = 16, n_ordinary: int = 600, encoder: str = "embedded",
                device: str = "cpu"):
    """One seed's :class:`~ecif.experiments.repair.RepairCase` (see :func:`repair_runs`), the influence
    engine at ``theta_hat`` and the seconds spent on the detection scores. ``case.info`` holds
    ``source`` (the swap's source value) and the fit's ``info``."""
    from ecif.core.evaluate import validation_gradient
    from ecif.data.features import load_features
    from ecif.data.noise import inject
    from ecif.experiments.detection import detection_scores
    from ecif.experiments.repair import RepairCase

    spec = ds["train"].spec
    pre = ds["pretrain"]
    ordinary = list(dict.fromkeys(pre.captions))[:int(n_ordinary)]
    corruption = inject(ds["train"], "attribute_swap", rate, int(noise_seed), systematic=True, attribute=attribute)
    _, source, target = corruption.details["swap"]
    with tempfile.TemporaryDirectory() as features_dir:
        fitted, info = fit_corrupted(ds.name, data_root, encoder_dir, features_dir, kind="attribute_swap", rate=rate,
                                     noise_seed=int(noise_seed), systematic=True, attribute=attribute,
                                     settings=settings, encoder=encoder, device=device)
        x_pre = load_features(features_dir)["x_pretrain"]
    problem, theta = fitted.problem, fitted.theta_hat
    t0 = time.perf_counter()
    engine = fitted.engine()
    scores = detection_scores(engine, validation_gradient(problem.val, theta), methods=("ecif",))["ecif"]
    score_s = time.perf_counter() - t0
    rows = fix_rows(pre.attributes, attribute, spec.values[attribute], source, target, n_fix, int(noise_seed))
    x_fix, _ = problem.centre_features(x=x_pre[rows])
    case = RepairCase(
        model=model, tokenizer=tokenizer, param=problem.param, theta_hat=theta, objective=problem.objective,
        text_mean=None if problem.centring is None else problem.centring[1], spec=spec, word=target,
        eval_x=problem.test_set.x, eval_attributes=ds["test"].attributes,
        ref_x=problem.val._x, ref_labels=np.asarray(ds["val"].labels),
        fix_x=as_tensor(x_fix, device), fix_captions=[pre.captions[i] for i in rows],
        ordinary_captions=ordinary, oracle=np.flatnonzero(problem.mask),
        scores=np.asarray(torch.as_tensor(scores).cpu()), info={"source": source, **info})
    return case, engine, score_s


def repair_runs(dataset: str = "shapes", data_root: str | Path = "data", encoder_dir: str | Path = "artifacts/encoder_shapes",
                *, attribute: str = "shape", rate: float = 0.2, noise_seeds=(0,), settings: FitSettings = FitSettings(lam=0.03),
                n_fix: int = 16, n_ordinary: int = 600, encoder: str = "embedded", device: str = "cpu",
                **repair_kwargs) -> pd.DataFrame:
    """The tidy repair table (:func:`ecif.experiments.repair.repair_table`) of every noise seed,
    with the columns ``noise_seed``, ``word`` (the swap's target) and ``source`` added; the
    ``seconds`` of ``ecif_top_k`` include the detection scores (one influence solve at the saved
    Hessian) besides the refit. Extra pairs for ``finetune`` and the edit: ``n_fix`` clean pairs
    of the ``pretrain`` split (:func:`fix_rows`); ``C`` from ``n_ordinary`` distinct pretrain
    captions. ``repair_kwargs`` go to :func:`ecif.experiments.repair.run_repairs` (``layer``,
    ``ridge``, ``steps``, ``fraction`` ...)."""
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder
    from ecif.experiments.repair import repair_table

    ds = load_dataset(dataset, root=data_root)
    model, tokenizer, _ = load_encoder(encoder, encoder_dir, device=device)
    model.eval()
    tables = []
    for noise_seed in noise_seeds:
        case, engine, score_s = repair_case(ds, model, tokenizer, data_root, encoder_dir, attribute=attribute, rate=rate,
                                            noise_seed=int(noise_seed), settings=settings, n_fix=n_fix,
                                            n_ordinary=n_ordinary, encoder=encoder, device=device)
        table = repair_table(case, preconditioner=engine.solver, **repair_kwargs)
        sel = (table["repair"] == "ecif_top_k") & (table["metric"] == "seconds")
        table.loc[sel, "value"] += score_s
        table.loc[sel, "change"] += score_s
        tables.append(table.assign(noise_seed=int(noise_seed), word=case.word, source=case.info["source"]))
    return pd.concat(tables, ignore_index=True)
