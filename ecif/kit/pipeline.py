"""Glue of the DVC pipeline: what the notebooks under ``notebooks/`` call.

The notebooks stay thin (narrative, a ``parameters`` cell, a few calls, plots); the logic they
share lives here so that it is tested and reused, not copied between notebooks:

- :func:`build_problem` turns saved features into the training objective ``L`` (LoRA adapters on
  the frozen projections, a fixed batching protocol, L2 pull ``lam``) and the validation objective
  ``L_val``, exactly as the fine-tuning stage defined them;
- :func:`save_fit` / :func:`load_fit` store and restore ``theta_hat``, the batching protocol,
  the configuration and the Hessian at ``theta_hat`` (``artifacts/finetune/``), so later stages
  rebuild the same problem without refitting;
- :func:`sample_loo_pairs` and :func:`loo_experiment` compare ECIF with leave-one-out retraining;
- :func:`detection_scores` scores every training pair with every method (higher = more harmful);
- :func:`write_json` writes metrics files deterministically (sorted keys, plain floats).

Figures are in :mod:`ecif.kit.plotting`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecif.core.batching import BatchingProtocol
from ecif.data.features import load_features
from ecif.core.heads import LoRAHeads
from ecif.core.objective import ContrastiveObjective
from ecif.core.terms import DTYPE, VARIANTS


def as_tensor(a) -> torch.Tensor:
    """float64 torch tensor of an array-like."""
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


def _plain(obj: Any) -> Any:
    """JSON-friendly copy: numpy/torch scalars and arrays become Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON with sorted keys (stable diffs); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n")
    return path


def write_csv(frame, path: str | Path, **kwargs) -> Path:
    """Write a DataFrame as CSV (parent folders created, floats to 10 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("index", False)
    kwargs.setdefault("float_format", "%.10g")
    frame.to_csv(path, **kwargs)
    return path


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------ problem


@dataclass
class Problem:
    """The fine-tuning problem of one pipeline run.

    ``objective`` is ``L`` on the (corrupted) train pairs, ``val`` is ``L_val`` (``lam = 0``) on
    the clean validation pairs, ``mask`` (n,) the ground-truth misaligned train pairs.
    ``x_test``, ``labels_test`` and ``class_text`` serve zero-shot evaluation.
    """

    param: LoRAHeads
    objective: ContrastiveObjective
    val: ContrastiveObjective
    batching: BatchingProtocol
    mask: np.ndarray
    x_test: torch.Tensor
    labels_test: torch.Tensor | None
    class_text: torch.Tensor | None
    config: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.objective.n

    def zero_shot(self, theta: torch.Tensor) -> float:
        """Zero-shot test accuracy of the heads at ``theta`` (nan without labels)."""
        from ecif.core.evaluate import zero_shot_accuracy

        if self.labels_test is None or self.class_text is None:
            return float("nan")
        return float(
            zero_shot_accuracy(
                self.param, theta, self.x_test, self.class_text, self.labels_test
            )
        )


def build_problem(
    features_dir: str | Path,
    *,
    rank: int,
    lam: float,
    batch_size: int | None,
    seed: int,
    n_train: int | None = None,
    batching: BatchingProtocol | None = None,
) -> Problem:
    """Objective ``L`` (LoRA rank ``rank`` on the saved projections) and ``L_val`` from features.

    ``n_train`` keeps only the first ``n_train`` train pairs (tiny smoke runs). The training
    batching protocol is drawn from ``seed`` (unless given), the validation one from ``seed + 1``.
    """
    feats = load_features(features_dir)
    x, y = feats["x_train"], feats["y_train"]
    mask = np.asarray(feats.get("noise_mask", np.zeros(len(x), dtype=bool)), dtype=bool)
    if n_train is not None:
        x, y, mask = x[:n_train], y[:n_train], mask[:n_train]
    n = len(x)
    param = LoRAHeads(
        as_tensor(feats["W_img"]),
        as_tensor(feats["W_txt"]),
        float(feats["log_logit_scale"]),
        rank=rank,
        seed=seed,
    )
    bp = (
        batching
        if batching is not None
        else BatchingProtocol.from_seed(n, batch_size, seed)
    )
    objective = ContrastiveObjective(param, as_tensor(x), as_tensor(y), bp, lam=lam)
    n_val = len(feats["x_val"])
    val_bp = BatchingProtocol.from_seed(n_val, batch_size, seed + 1)
    val = ContrastiveObjective(
        param, as_tensor(feats["x_val"]), as_tensor(feats["y_val"]), val_bp, lam=0.0
    )
    labels = feats.get("labels_test")
    config = {
        "features_dir": str(features_dir),
        "rank": rank,
        "lam": lam,
        "batch_size": batch_size,
        "seed": seed,
        "n_train": n_train,
    }
    return Problem(
        param=param,
        objective=objective,
        val=val,
        batching=bp,
        mask=mask,
        x_test=as_tensor(feats["x_test"]),
        labels_test=None if labels is None else torch.as_tensor(np.asarray(labels)),
        class_text=as_tensor(feats["class_text"]) if "class_text" in feats else None,
        config=config,
    )


def save_fit(
    out_dir: str | Path,
    problem: Problem,
    theta_hat: torch.Tensor,
    report: dict,
    hessian=None,
) -> Path:
    """Write ``theta_hat.npy``, ``batching.npy``, ``fit.json`` (config + report) and, if given,
    ``hessian.npy`` (the Hessian of ``L`` at ``theta_hat``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "theta_hat.npy", theta_hat.detach().cpu().numpy())
    np.save(out / "batching.npy", problem.batching.batch_ids, allow_pickle=False)
    if hessian is not None:
        np.save(out / "hessian.npy", torch.as_tensor(hessian).detach().cpu().numpy())
    write_json(out / "fit.json", {"config": problem.config, "report": report})
    return out


@dataclass
class Fitted:
    problem: Problem
    theta_hat: torch.Tensor
    report: dict
    hessian: torch.Tensor | None


def load_fit(fit_dir: str | Path) -> Fitted:
    """Rebuild the problem of a saved fit (same features, batching, rank, lam, seed)."""
    fit_dir = Path(fit_dir)
    saved = read_json(fit_dir / "fit.json")
    cfg = saved["config"]
    problem = build_problem(
        cfg["features_dir"],
        rank=cfg["rank"],
        lam=cfg["lam"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        n_train=cfg["n_train"],
        batching=BatchingProtocol(np.load(fit_dir / "batching.npy", allow_pickle=False)),
    )
    theta = as_tensor(np.load(fit_dir / "theta_hat.npy"))
    h_path = fit_dir / "hessian.npy"
    hessian = as_tensor(np.load(h_path)) if h_path.is_file() else None
    return Fitted(problem, theta, saved["report"], hessian)


# ------------------------------------------------------------------------- leave-one-out


def sample_loo_pairs(
    mask: np.ndarray, n_pairs: int, n_misaligned: int, seed: int
) -> np.ndarray:
    """Sorted indices of ``n_pairs`` train pairs, ``n_misaligned`` of them misaligned (seeded).

    Both counts are capped by what the split holds.
    """
    mask = np.asarray(mask, dtype=bool)
    rng = np.random.default_rng(seed)
    bad, good = np.flatnonzero(mask), np.flatnonzero(~mask)
    n_bad = min(n_misaligned, len(bad), n_pairs)
    n_good = min(n_pairs - n_bad, len(good))
    idx = np.concatenate(
        [rng.choice(bad, n_bad, replace=False), rng.choice(good, n_good, replace=False)]
    )
    return np.sort(idx.astype(np.int64))


def loo_experiment(
    problem: Problem,
    theta_hat: torch.Tensor,
    indices: np.ndarray,
    *,
    gtol: float = 1e-9,
    max_iter: int = 100,
    method: str = "newton-cg",
    variants=VARIANTS,
) -> tuple[Any, dict]:
    """Predicted influence against leave-one-out retraining for the pairs ``indices``.

    Computes ECIF from scratch (dense Hessian at ``theta_hat``, one solve, every pair scored:
    that is the timed ``ecif_all_pairs_s``), then refits ``L_{-k}`` for each ``k`` in
    ``indices`` (warm start, the influence solver as preconditioner; each refit timed). Where
    the fixed Hessian stops fitting, a refit falls back to ``method`` steps (``newton-cg``:
    Hessian-vector products, much cheaper here than a dense Hessian per step).

    Returns ``(table, info)``: a DataFrame with one row per pair (``pair``, ``misaligned``,
    ``actual`` = ``L_val(theta_{-k}) - L_val(theta_hat)``, one column per variant with the
    predicted ``IS(k)``, ``refit_grad_norm``, ``refit_iterations``, ``refit_converged``), and a
    dict with the timings, the solver report and the influence scores of *all* pairs.
    """
    import pandas as pd

    from ecif.core.evaluate import validation_gradient, validation_loss
    from ecif.core.fit import retrain_without
    from ecif.core.influence import ECIF

    start = time.perf_counter()
    engine = ECIF(problem.objective, theta_hat, solver="dense", damping=0.0)
    scores = engine.influence_scores(
        validation_gradient(problem.val, theta_hat), variants
    )
    ecif_seconds = time.perf_counter() - start

    base = validation_loss(problem.val, theta_hat)
    rows, refit_seconds = [], []
    for k in indices:
        t0 = time.perf_counter()
        res = retrain_without(
            problem.objective,
            theta_hat,
            [int(k)],
            gtol=gtol,
            max_iter=max_iter,
            method=method,
            preconditioner=engine.solver,
        )
        refit_seconds.append(time.perf_counter() - t0)
        row = {
            "pair": int(k),
            "misaligned": bool(problem.mask[k]),
            "actual": validation_loss(problem.val, res.theta) - base,
            "refit_grad_norm": res.grad_norm,
            "refit_iterations": res.iterations,
            "refit_converged": bool(res.converged),
        }
        row.update({v: float(scores[v][k]) for v in variants})
        rows.append(row)
    table = pd.DataFrame(rows)
    info = {
        "ecif_all_pairs_s": ecif_seconds,
        "retrain_one_s": float(np.median(refit_seconds))
        if refit_seconds
        else float("nan"),
        "retrain_total_s": float(np.sum(refit_seconds)),
        "solver": dict(engine.solver.report),
        "scores": {v: scores[v].numpy() for v in variants},
        "val_loss": base,
    }
    return table, info


def loo_metrics(table, variants=VARIANTS) -> dict:
    """``{variant: {"pearson", "spearman"}}`` of predicted ``IS`` against ``actual``."""
    from ecif.experiments.metrics import loo_agreement

    out = {}
    for v in variants:
        agree = loo_agreement(table[v].to_numpy(), table["actual"].to_numpy())
        out[v] = {"pearson": agree["pearson"], "spearman": agree["spearman"]}
    return out


# ----------------------------------------------------------------------------- detection


def detection_scores(
    problem: Problem,
    theta_hat: torch.Tensor,
    hessian: torch.Tensor | None = None,
    *,
    seed: int = 0,
    variants=VARIANTS,
) -> dict[str, np.ndarray]:
    """Detection score (n,) of every train pair per method; **higher = more harmful**.

    Methods: the influence variants (``-IS``, one shared solve; ``hessian`` reuses the Hessian
    saved by the fine-tuning stage), ``tracin`` (ECIF with ``H = I``), ``pair_loss`` (the pair's
    own contrastive loss), ``cosine`` (negative image-text cosine) and ``random``. A thin wrapper
    of :func:`ecif.experiments.detection.detection_scores` with the method list of the ``detect`` stage.
    """
    from ecif.experiments.detection import detection_scores as all_scores
    from ecif.core.evaluate import validation_gradient
    from ecif.core.influence import ECIF
    from ecif.core.solvers import DenseSolver

    solver = DenseSolver(hessian) if hessian is not None else "dense"
    engine = ECIF(problem.objective, theta_hat, solver=solver)
    methods = (*variants, "tracin", "pair_loss", "cosine", "random")
    return all_scores(engine, validation_gradient(problem.val, theta_hat), methods, seed=seed)


def detection_curves(scores: dict[str, np.ndarray], mask: np.ndarray, ks=None):
    """Wide DataFrames ``(precision, recall)``: column ``k`` and one column per method."""
    import pandas as pd

    from ecif.experiments.metrics import precision_recall_curve_at_ks

    mask = np.asarray(mask, dtype=bool)
    ks = np.arange(1, len(mask) + 1) if ks is None else np.asarray(ks)
    prec, rec = pd.DataFrame({"k": ks}), pd.DataFrame({"k": ks})
    for name, s in scores.items():
        curve = precision_recall_curve_at_ks(s, mask, ks)
        prec[name] = curve["precision"].to_numpy()
        rec[name] = curve["recall"].to_numpy()
    return prec, rec


# ------------------------------------------------------------------- sweeps (issue 5)


def fit_corrupted(
    dataset: str,
    data_root: str | Path,
    encoder_dir: str | Path,
    features_dir: str | Path,
    *,
    kind: str,
    rate: float,
    noise_seed: int,
    systematic: bool = False,
    rank: int = 1,
    lam: float = 0.1,
    batch_size: int | None = 64,
    seed: int = 0,
    gtol: float = 1e-9,
    max_iter: int = 100,
    method: str = "newton-cg",
    n_train: int | None = None,
) -> tuple[Fitted, dict]:
    """One cell of a sweep, stages 1 and 3 in one call: corrupt the train split (``kind``,
    ``rate``, ``noise_seed``, ``systematic`` for ``attribute_swap``), encode every split with the
    saved frozen encoder (features written to ``features_dir``), build the problem and fit it.

    Returns ``(fitted, info)``: the fit with its Hessian, and ``info`` with ``n_train``,
    ``n_misaligned``, ``fit_grad_norm``, ``fit_converged``, ``min_eigenvalue``,
    ``zero_shot_{base,fitted}`` and the seconds spent in ``features_s`` and ``fit_s``.
    Raises ``RuntimeError`` when the fit does not reach ``gtol``.
    """
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_default
    from ecif.data.features import extract_features, save_features
    from ecif.core.fit import fit
    from ecif.data.noise import inject

    t0 = time.perf_counter()
    ds = load_dataset(dataset, root=data_root)
    corruption = inject(ds["train"], kind, rate, noise_seed, systematic=systematic)
    model, tokenizer, _ = load_default(encoder_dir)
    save_features(features_dir, extract_features(model, tokenizer, ds, corruption=corruption, progress=False))
    features_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    problem = build_problem(features_dir, rank=rank, lam=lam, batch_size=batch_size, seed=seed, n_train=n_train)
    res = fit(problem.objective, gtol=gtol, max_iter=max_iter, method=method)
    if not res.converged:
        raise RuntimeError(f"the fit did not reach gtol={gtol}: {res.summary()}")
    hessian = problem.objective.hessian(res.theta)
    fit_s = time.perf_counter() - t0
    info = {
        "n_train": problem.n,
        "n_misaligned": int(problem.mask.sum()),
        "fit_grad_norm": res.grad_norm,
        "fit_converged": bool(res.converged),
        "min_eigenvalue": float(torch.linalg.eigvalsh(hessian)[0]),
        "zero_shot_base": problem.zero_shot(problem.param.theta0),
        "zero_shot_fitted": problem.zero_shot(res.theta),
        "features_s": features_s,
        "fit_s": fit_s,
    }
    return Fitted(problem, res.theta, res.summary(), hessian), info
