"""The run's problem and its artifacts: what the notebooks under ``notebooks/`` fit and reload.

- :func:`build_problem` turns saved features into the training objective ``L`` (LoRA adapters on
  the frozen projections, a fixed batching protocol, L2 pull ``lam``), the validation objective
  ``L_val`` and the zero-shot test set, exactly as the fine-tuning stage defined them;
- :func:`save_fit` / :func:`load_fit` store and restore ``theta_hat``, the batching protocol,
  the configuration and the Hessian at ``theta_hat`` (``artifacts/finetune/``), so later stages
  rebuild the same problem without refitting; :meth:`Fitted.engine` is the influence engine of
  a fit (the saved Hessian, factorised once);
- :class:`FitSettings` gathers the fine-tuning parameters (``params.yaml`` group ``finetune``),
  and :func:`fit_corrupted` runs one cell of a sweep: corrupt, encode, fit.

File helpers are in :mod:`ecif.kit.files`, figures in :mod:`ecif.kit.plotting`; the experiments
themselves (leave-one-out, detection, cleaning, ...) in :mod:`ecif.experiments`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.fit import diagnose
from ecif.core.blocks import BlockLoRA
from ecif.core.heads import LoRAHeads
from ecif.core.terms import DTYPE
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.core.solvers import DenseSolver, lanczos_extremes
from ecif.data.features import load_features
from ecif.experiments.zeroshot import ZeroShotSet
from ecif.kit.files import read_json, write_json

__all__ = ["FitSettings", "Fitted", "MODES", "Problem", "as_tensor", "build_problem", "centring_means", "curvature",
           "extract_and_save", "fit_corrupted", "load_fit", "not_converged_message", "save_fit", "scored_swap_fits"]

#: ``finetune.mode``: LoRA on the two final projections over frozen pooled features (``head``),
#: or LoRA inside the last transformer blocks of both towers plus the projections (``blocks``).
MODES = ("head", "blocks")


def as_tensor(a, device="cpu") -> torch.Tensor:
    """float64 torch tensor of an array-like, on ``device``."""
    a = a.detach() if isinstance(a, torch.Tensor) else np.asarray(a)
    return torch.as_tensor(a, dtype=DTYPE, device=device)


def _check_device(device) -> str:
    """``device`` as a string, refused with the fix when it is ``cuda`` on a machine without one."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but torch.cuda.is_available() is false on this "
                         "machine; pass device='cpu' (common.device: cpu).")
    return str(dev)


@dataclass
class Problem:
    """The fine-tuning problem of one pipeline run.

    ``objective`` is ``L`` on the (corrupted) train pairs, ``val`` is ``L_val`` (``lam = 0``) on
    the clean validation pairs, ``mask`` (n,) the ground-truth misaligned train pairs.
    ``test_set`` is the zero-shot evaluation set of the test split (``None`` when the data set
    has no labels or class prompts). ``centring`` holds the image and text means subtracted from
    every feature (docs/math.md §13; ``None`` when uncentred): apply them to any other features
    fed to this problem's model (:meth:`centre_features`).
    """

    param: LoRAHeads | BlockLoRA
    objective: ContrastiveObjective
    val: ContrastiveObjective
    batching: BatchingProtocol
    mask: np.ndarray
    test_set: ZeroShotSet | None
    config: dict = field(default_factory=dict)
    centring: tuple[np.ndarray, np.ndarray] | None = None
    y_train_clean: torch.Tensor | None = None

    def clean_objective(self):
        """``L`` on the same train pairs (batching, ``lam``) with their true captions: the
        features' ``y_train_clean`` (centred like the rest); ``None`` when the features hold no
        clean captions (no corruption was applied)."""
        if self.y_train_clean is None:
            return None
        o = self.objective
        return ContrastiveObjective(self.param, o._x, self.y_train_clean, self.batching, lam=o.lam)

    def centre_features(self, x=None, y=None):
        """Image features ``x`` and text features ``y`` (either may be ``None``) mapped as this
        problem's frozen map does: minus the centring means (unchanged when uncentred)."""
        mu_img, mu_txt = self.centring if self.centring is not None else (0.0, 0.0)
        return (None if x is None else np.asarray(x, dtype=np.float64) - mu_img,
                None if y is None else np.asarray(y, dtype=np.float64) - mu_txt)

    @property
    def n(self) -> int:
        return self.objective.n

    @property
    def train_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The train features ``(x, y)`` as the objective sees them (float64, centred when the
        problem was built with ``centre=True``, docs/math.md §13): rebuild objectives on the same
        pairs (other batch sizes, other ``lam``) from these, not from the saved files."""
        return self.objective._x, self.objective._y


def centring_means(feats: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """The means subtracted from image and text features when centring (docs/math.md §13).

    Taken from the ``pretrain`` split (the clean pairs of the frozen encoder), or from the
    ``val`` split when the features hold no pretrain split: never from the train pairs, so
    removing train pairs leaves the frozen map unchanged and influence stays exact. Columns
    that are constant on that split (the constant-1 feature carrying a projection bias,
    ``ecif.data.features``) are not shifted. Returns ``(mean_img, mean_txt, split)``.
    """
    split = "pretrain" if "x_pretrain" in feats and "y_pretrain" in feats else "val"
    means = []
    for key in (f"x_{split}", f"y_{split}"):
        z = np.asarray(feats[key], dtype=np.float64)
        mu = z.mean(axis=0)
        mu[z.std(axis=0) == 0] = 0.0
        means.append(mu)
    return means[0], means[1], split


def build_problem(
    features_dir: str | Path,
    *,
    rank: int,
    lam: float,
    batch_size: int | None,
    seed: int,
    n_train: int | None = None,
    batching: BatchingProtocol | None = None,
    centre: bool = False,
    device: str = "cpu",
    targets=("qv",),
) -> Problem:
    """Objective ``L`` (LoRA rank ``rank`` on the saved projections) and ``L_val`` from features.

    The mode is the features' (``features.json`` ``mode``, written by :func:`extract_and_save`):
    ``head`` features are pooled pre-projection features and the parametrization is
    :class:`~ecif.core.heads.LoRAHeads`; ``blocks`` features are the rows of
    :mod:`ecif.core.blocks` and the parametrization is :class:`~ecif.core.blocks.BlockLoRA` on
    the saved suffix (``suffix.pt``) with adapters on ``targets`` (``finetune.targets``).

    ``n_train`` keeps only the first ``n_train`` train pairs (tiny smoke runs). The training
    batching protocol is drawn from ``seed`` (unless given), the validation one from ``seed + 1``.
    ``centre=True`` subtracts the image and text means of the pretrain split
    (:func:`centring_means`) from every feature that enters the problem (train, val, test
    images, class prompts) as part of the frozen map: the embedding is ``W (x - mean)``
    (docs/math.md §13): use it for features with a large common offset (the fit's warning names
    one). ``centre=False`` (default, see §13 for why) uses the features as saved.

    ``device`` (``common.device``: ``cpu`` or ``cuda``) is where the features, the parameters
    and every computation on them (fit, Hessian-vector products, solves, influence scores) live,
    in float64; random initialisation is drawn on the CPU, so ``theta0`` is the same everywhere.
    Scores come back to numpy with ``.cpu()``.
    """
    device = _check_device(device)
    feats = load_features(features_dir)
    mode = feats["meta"].get("mode", "head")
    centre_split, centring = None, None
    if centre and mode == "blocks":
        raise ValueError("finetune.centre: true shifts pooled features; block features are token activations entering "
                         "the adapted blocks, where a shift would change the model. Fix: finetune.centre: false with "
                         "finetune.mode: blocks.")
    if centre:
        mu_img, mu_txt, centre_split = centring_means(feats)
        centring = (mu_img, mu_txt)
        for key in [k for k in feats if k.startswith("x_")]:
            feats[key] = np.asarray(feats[key], dtype=np.float64) - mu_img
        for key in [k for k in feats if k.startswith("y_")] + (["class_text"] if "class_text" in feats else []):
            feats[key] = np.asarray(feats[key], dtype=np.float64) - mu_txt
    x, y = feats["x_train"], feats["y_train"]
    y_clean = feats.get("y_train_clean")
    mask = np.asarray(feats.get("noise_mask", np.zeros(len(x), dtype=bool)), dtype=bool)
    if n_train is not None:
        x, y, mask = x[:n_train], y[:n_train], mask[:n_train]
        y_clean = None if y_clean is None else y_clean[:n_train]
    n = len(x)
    if mode == "blocks":
        from ecif.experiments.block_features import load_suffix

        image, text = load_suffix(Path(features_dir) / "suffix.pt")
        param = BlockLoRA(image, text, float(feats["log_logit_scale"]), rank=rank, targets=tuple(targets), seed=seed,
                          device=device)
    else:
        param = LoRAHeads(
            as_tensor(feats["W_img"], device),
            as_tensor(feats["W_txt"], device),
            float(feats["log_logit_scale"]),
            rank=rank,
            seed=seed,
        )
    bp = batching if batching is not None else BatchingProtocol.from_seed(n, batch_size, seed)
    objective = ContrastiveObjective(param, as_tensor(x, device), as_tensor(y, device), bp, lam=lam)
    n_val = len(feats["x_val"])
    val_bp = BatchingProtocol.from_seed(n_val, batch_size, seed + 1)
    val = ContrastiveObjective(
        param, as_tensor(feats["x_val"], device), as_tensor(feats["y_val"], device), val_bp, lam=0.0
    )
    test_set = None
    if "labels_test" in feats and "class_text" in feats:
        test_set = ZeroShotSet(as_tensor(feats["x_test"], device), as_tensor(feats["class_text"], device),
                               feats["labels_test"])
    config = {
        "features_dir": str(features_dir),
        "rank": rank,
        "lam": lam,
        "batch_size": batch_size,
        "seed": seed,
        "n_train": n_train,
        "centre": bool(centre),
        "centre_split": centre_split,
        "device": device,
        "mode": mode,
    }
    if mode == "blocks":
        config.update(targets=list(targets), blocks=int(feats["meta"]["blocks"]["n_blocks"]))
    return Problem(param=param, objective=objective, val=val, batching=bp, mask=mask, test_set=test_set,
                   config=config, centring=centring,
                   y_train_clean=None if y_clean is None else as_tensor(y_clean, device))


def extract_and_save(features_dir: str | Path, model, tokenizer, dataset, corruption=None, *, mode: str = "head",
                     blocks: int = 1) -> dict:
    """Encode every split for ``mode`` and write the features to ``features_dir``: pooled
    pre-projection features (``head``, :func:`ecif.data.features.extract_features`) or block
    rows plus the suffix ``suffix.pt`` (``blocks``, the last ``blocks`` blocks of each tower
    adapted, :func:`ecif.experiments.block_features.extract_block_features`). Returns the features."""
    from ecif.data.features import extract_features, save_features

    if mode not in MODES:
        raise ValueError(f"finetune.mode must be one of {MODES}, got {mode!r}.")
    if mode == "head":
        feats = extract_features(model, tokenizer, dataset, corruption=corruption, progress=False)
        save_features(features_dir, feats)
        return feats
    from ecif.experiments.block_features import extract_block_features, save_suffix

    feats = extract_block_features(model, tokenizer, dataset, blocks, corruption=corruption)
    image, text = feats.pop("suffix")
    save_features(features_dir, feats)
    save_suffix(Path(features_dir) / "suffix.pt", image, text)
    return feats


def curvature(problem: Problem, theta: torch.Tensor, iters: int = 60) -> dict:
    """The Hessian of ``L`` at ``theta`` as the stages use it: ``{"hessian", "min_eigenvalue",
    "max_eigenvalue", "method"}``. Head mode: the dense Hessian and its exact extreme
    eigenvalues (``method`` ``"dense"``). Block mode: no dense Hessian (``None``); the extremes
    from ``iters`` Lanczos steps on exact Hessian-vector products (``"lanczos"``, the smallest
    one is an upper bound of the true smallest)."""
    if problem.config.get("mode", "head") == "head":
        h = problem.objective.hessian(theta)
        eig = torch.linalg.eigvalsh(h)
        return {"hessian": h, "min_eigenvalue": float(eig[0]), "max_eigenvalue": float(eig[-1]), "method": "dense"}
    lo, hi = lanczos_extremes(lambda v: problem.objective.hvp(theta, v), problem.param.n_params, iters,
                              device=problem.objective.device)
    return {"hessian": None, "min_eigenvalue": lo, "max_eigenvalue": hi, "method": f"lanczos ({iters} steps)"}


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
        np.save(out / "hessian.npy", hessian.detach().cpu().numpy() if isinstance(hessian, torch.Tensor)
                else np.asarray(hessian))
    write_json(out / "fit.json", {"config": problem.config, "report": report})
    return out


@dataclass
class Fitted:
    """A fitted problem: ``theta_hat``, the fit's report and, when saved, the Hessian of ``L``
    at ``theta_hat``."""

    problem: Problem
    theta_hat: torch.Tensor
    report: dict
    hessian: torch.Tensor | None

    @property
    def solver_kind(self) -> str:
        """``"dense"`` (head mode: the saved Hessian, or one computed here) or ``"cg"`` (block mode:
        matrix-free conjugate gradient on exact Hessian-vector products, no dense Hessian)."""
        return "dense" if self.hessian is not None or self.problem.config.get("mode", "head") == "head" else "cg"

    def engine(self, damping: float = 0.0) -> ECIF:
        """The influence engine at ``theta_hat``, damping ``mu = damping``: a dense solver on the
        saved Hessian (computed here when none was saved) in head mode, CG in block mode."""
        if self.hessian is not None:
            return ECIF(self.problem.objective, self.theta_hat, solver=DenseSolver(self.hessian, damping), damping=damping)
        return ECIF(self.problem.objective, self.theta_hat, solver=self.solver_kind, damping=damping)


def load_fit(fit_dir: str | Path, device: str | None = None) -> Fitted:
    """Rebuild the problem of a saved fit (same features, batching, rank, lam, seed).

    ``device``: where the problem, ``theta_hat`` and the Hessian are put (:func:`build_problem`);
    ``None`` (default): the device the fit was made on, recorded in its ``fit.json`` (``cpu`` for
    fits saved before the device was recorded)."""
    fit_dir = Path(fit_dir)
    saved = read_json(fit_dir / "fit.json")
    cfg = saved["config"]
    device = _check_device(cfg.get("device", "cpu") if device is None else device)
    problem = build_problem(
        cfg["features_dir"],
        rank=cfg["rank"],
        lam=cfg["lam"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        n_train=cfg["n_train"],
        centre=cfg.get("centre", False),  # fits saved before centring existed were uncentred
        targets=cfg.get("targets", ("qv",)),
        batching=BatchingProtocol(np.load(fit_dir / "batching.npy", allow_pickle=False)),
        device=device,
    )
    theta = as_tensor(np.load(fit_dir / "theta_hat.npy"), device)
    h_path = fit_dir / "hessian.npy"
    hessian = as_tensor(np.load(h_path), device) if h_path.is_file() else None
    return Fitted(problem, theta, saved["report"], hessian)


# ------------------------------------------------------------------- sweeps (issue 5)


@dataclass(frozen=True)
class FitSettings:
    """How a problem is built from features and fitted (``params.yaml`` group ``finetune``).

    ``rank``: LoRA rank; ``lam``: L2 pull towards ``theta0``; ``batch_size``: fixed batches of
    the contrastive loss (``None``: one batch); ``seed``: LoRA init and batching protocol;
    ``gtol``, ``max_iter``, ``method``: the fit (:func:`ecif.core.fit.fit`); ``n_train``: keep
    only the first ``n_train`` train pairs (``None``: all); ``centre``: centre the features with
    the pretrain means (:func:`build_problem`, docs/math.md §13); ``mode``, ``blocks``,
    ``targets``: ``finetune.mode`` (``head`` or ``blocks``), how many blocks per tower and which
    of their matrices get adapters in block mode (:func:`extract_and_save`).
    """

    rank: int = 1
    lam: float = 0.1
    batch_size: int | None = 64
    seed: int = 0
    gtol: float = 1e-9
    max_iter: int = 100
    method: str = "newton-cg"
    n_train: int | None = None
    centre: bool = False
    mode: str = "head"
    blocks: int = 1
    targets: tuple = ("qv",)

    def problem_kwargs(self) -> dict:
        """The keyword arguments of :func:`build_problem`."""
        d = asdict(self)
        return {k: d[k] for k in ("rank", "lam", "batch_size", "seed", "n_train", "centre", "targets")}


def not_converged_message(problem: Problem, res, settings: FitSettings) -> str:
    """Why a fit stopped above ``gtol`` and what to change: the gradient norm reached, the
    offset ratio of the train features (:func:`ecif.core.fit.offset_ratio`), an embedding collapse, and the
    ``finetune`` parameters that help."""
    return (f"the fit did not reach gtol={settings.gtol}: gradient norm {res.grad_norm:.3e} after "
            f"{res.iterations} {res.method} iterations.{diagnose(problem.objective, res.theta)} What to change: "
            f"centre the features (finetune.centre: true, i.e. FitSettings(centre=True); now "
            f"{str(settings.centre).lower()}); a larger finetune.lam (now {settings.lam}); a larger finetune.max_iter (now "
            f"{settings.max_iter}); finetune.method: newton (exact dense Newton steps; now {settings.method}). "
            f"Fit report: {res.summary()}")


def _zero_shot(problem: Problem, theta: torch.Tensor) -> float:
    return float("nan") if problem.test_set is None else problem.test_set.accuracy(problem.param, theta)


def scored_swap_fits(dataset: str, data_root, encoder_dir, *, attribute: str, rate: float, noise_seeds,
                     settings: FitSettings = FitSettings(), encoder: str = "embedded", device: str = "cpu",
                     seed: int = 0) -> dict:
    """The cleaning stage's own fits: for each noise seed, :func:`fit_corrupted` with a
    systematic swap of ``attribute`` (every corrupted pair gets the same wrong value) at ``rate``,
    the influence engine and every detection method's scores
    (:func:`ecif.experiments.detection.detection_scores`). Returns ``{noise_seed: (fitted,
    scores)}`` (a :class:`Fitted`; scores by method, without ``random``). The features are
    temporary."""
    import tempfile

    from ecif.core.evaluate import validation_gradient
    from ecif.experiments.detection import detection_scores

    out = {}
    for noise_seed in noise_seeds:
        with tempfile.TemporaryDirectory() as features_dir:
            fitted, _ = fit_corrupted(dataset, data_root, encoder_dir, features_dir, kind="attribute_swap", rate=rate,
                                      noise_seed=int(noise_seed), systematic=True, attribute=attribute,
                                      settings=settings, encoder=encoder, device=device)
        scores = detection_scores(fitted.engine(), validation_gradient(fitted.problem.val, fitted.theta_hat), seed=seed)
        scores.pop("random", None)  # random deletions are the cleaning table's own rows, one per seed
        out[int(noise_seed)] = (fitted, scores)
    return out


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
    attribute: str | None = None,
    settings: FitSettings = FitSettings(),
    encoder: str = "embedded",
    device: str = "cpu",
) -> tuple[Fitted, dict]:
    """One cell of a sweep, stages 1 and 3 in one call: corrupt the train split (``kind``,
    ``rate``, ``noise_seed``, ``systematic`` and ``attribute`` for ``attribute_swap``: the attribute
    changed, default random per pair, ``color`` when systematic), encode every split with the
    saved frozen encoder (features written to ``features_dir``), build the problem and fit it
    with ``settings``. ``encoder`` is the ``common.encoder`` switch (``embedded``: the default
    encoder saved in ``encoder_dir``), ``device`` where the features are extracted and the
    problem is fitted (:func:`build_problem`, float64).

    Returns ``(fitted, info)``: the fit with its Hessian, and ``info`` with ``n_train``,
    ``n_misaligned``, ``fit_grad_norm``, ``fit_converged``, ``min_eigenvalue``,
    ``zero_shot_{base,fitted}`` (nan without a labelled test set) and the seconds spent in
    ``features_s`` and ``fit_s`` (timings: :func:`ecif.kit.reports.split_timings` moves them to
    the metrics' ``time`` group). Raises ``RuntimeError`` when the fit does not reach
    ``settings.gtol``.
    """
    from ecif.core.fit import fit
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder
    from ecif.data.noise import inject

    t0 = time.perf_counter()
    ds = load_dataset(dataset, root=data_root)
    corruption = inject(ds["train"], kind, rate, noise_seed, systematic=systematic, attribute=attribute)
    model, tokenizer, _ = load_encoder(encoder, encoder_dir, device=device)
    extract_and_save(features_dir, model, tokenizer, ds, corruption, mode=settings.mode, blocks=settings.blocks)
    features_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    problem = build_problem(features_dir, **settings.problem_kwargs(), device=device)
    res = fit(problem.objective, gtol=settings.gtol, max_iter=settings.max_iter, method=settings.method)
    if not res.converged:
        raise RuntimeError(not_converged_message(problem, res, settings))
    curv = curvature(problem, res.theta)
    fit_s = time.perf_counter() - t0
    info = {
        "n_train": problem.n,
        "n_misaligned": int(problem.mask.sum()),
        "fit_grad_norm": res.grad_norm,
        "fit_converged": bool(res.converged),
        "min_eigenvalue": curv["min_eigenvalue"],
        "zero_shot_base": _zero_shot(problem, problem.param.theta0),
        "zero_shot_fitted": _zero_shot(problem, res.theta),
        "features_s": features_s,
        "fit_s": fit_s,
    }
    return Fitted(problem, res.theta, res.summary(), curv["hessian"]), info
