"""Established influence libraries on the kit's problem: adapters for kronfluence, dattri and TRAK.

One job: hand the fitted LoRA-heads problem (:mod:`ecif.core.heads`, :mod:`ecif.core.objective`)
to a third-party influence library the way a practitioner would, and return its scores in the
kit's convention, so they can be scored against the same leave-one-out refits as ECIF.

**What the libraries cannot express.** Both libraries assume a training loss that is a sum of
per-example losses, each a function of the parameters and of that example alone (dattri vmaps
``grad`` over examples; kronfluence builds per-example gradients from each example's own
activations and output gradients). The symmetric InfoNCE of a batch is not of that form: pair
``k`` is the positive of its own row and column and a negative in every other row and column of
its batch. The adapter therefore makes one library "example" per training pair that carries
**its whole fixed batch** (the features of all ``b`` pairs of the batch, padded like
:meth:`ecif.core.batching.BatchingProtocol.padded`, a keep mask and a one-hot weight on ``k``'s
slot). The per-example loss is ``Pos_k``: the pair's own row and column InfoNCE terms, with the
other pairs' embeddings **recomputed from the parameters** (not frozen), so its gradient is the
exact ``grad Pos_k(theta)`` of :meth:`ContrastiveObjective.pair_terms`. Its mean over the
examples is the kit's data term ``(1/n) sum_k Pos_k``, so a library's Hessian of "the training
loss" is the kit's data Hessian; the L2 pull ``(lam/2)||theta - theta0||^2`` is not a per-example
loss and enters as the libraries' damping / regularisation ``lam * I`` (its exact Hessian).
What cannot be expressed at all is the **negative role** of ``k`` (the ``Neg_k`` /
``NegExact_k`` terms of the other pairs' losses): a per-example loss attributes to ``k`` only
its own terms, so every peer is, at best, the kit's ``positive`` variant (the classical
influence function); dattri's exact and CG solvers compute exactly that (tested), kronfluence
approximates its Hessian.

kronfluence specifics: it tracks ``nn.Linear`` (and ``Conv2d``) modules only. A bare
``logit_scale`` parameter, as in open_clip's CLIP, would be left out of its gradients and
curvature, so the adapter writes ``t`` as a bias-free ``nn.Linear(1, 1)`` applied to a constant
1 (one per example); ``track_logit_scale=False`` leaves it untracked (the four LoRA factors
only), for comparison. Its K-FAC / EK-FAC curvature is block-diagonal per module (the four
factors and ``t``). With one example = one batch of ``b`` slots, kronfluence treats the slots
like tokens of a sequence (padding masked by ``get_attention_mask``): its Kronecker factors are
averages over slots, so K-FAC's curvature scale is not the Hessian's (EK-FAC refits the
eigenvalues on per-example gradients). The true-Fisher factors sample a text for the pair's row
and an image for its column from the model's own softmax (``sample=True``).

**Sign and scale convention** (the kit's, docs/math.md §5-§6, :mod:`ecif.core.influence`):
``IS(k) ~ L_val(theta_hat_{-k}) - L_val(theta_hat)``, negative = harmful, with the ``1/n`` of the
objective. The libraries return ``raw(k) = g_val^T P^-1 g_k`` (``g_k = grad Pos_k``, ``g_val =
grad L_val``, ``P`` their curvature of the *mean* per-example loss plus damping), which predicts
the change of ``L_val`` for removing ``k`` times ``n`` (removal is the weight ``-1/n`` on
``Pos_k``; ``theta_{-k} - theta ~ +(1/n) P^-1 g_k``). Both libraries' raw scores have that sign
(checked in tests/experiments/test_peers.py against the analytic value), so :func:`peer_scores`
returns ``raw / n``: for ``dattri_explicit`` this equals the kit's ``positive`` variant exactly
(``P = H``), for ``kronfluence_identity`` it is ``(1/n) g_val^T g_k`` (over the LoRA factors
only when ``track_logit_scale=False``).

TRAK (``traker``, peer ``trak``) is not an influence function: its scores come from
:mod:`ecif.experiments.trak_peer` (its CLIP model output on the fixed batches, one checkpoint or an
ensemble of refits on random halves), have the kit's sign but **not** its scale (``scores = raw``, not in
loss units): compare them only scale-free (Pearson, Spearman, AUROC).

Install: ``pip install -e '.[peers]' -c requirements.lock`` (kronfluence, dattri, traker). Only
this module (and :mod:`ecif.experiments.trak_peer`) imports them, lazily; :func:`available`
tells whether a peer can run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ecif.core import terms
from ecif.core.heads import LoRAHeads
from ecif.core.objective import ContrastiveObjective
from ecif.core.terms import DTYPE
from ecif.experiments.baselines import harmfulness
from ecif.experiments.metrics import auroc, loo_agreement

__all__ = ["PEERS", "PEER_LIBRARY", "INSTALL_HINT", "PeerResult", "PeerUnavailable", "HeadsModule", "PairExamples",
           "available", "train_examples", "query_example", "example_losses", "peer_scores", "agreement", "unsupported"]

#: The peers, in the order the kit reports them.
PEERS = ("kronfluence_ekfac", "kronfluence_kfac", "kronfluence_identity", "dattri_cg", "dattri_explicit", "trak")
#: Which library (import name) each peer needs (``trak``: the ``traker`` package).
PEER_LIBRARY = {name: name.split("_", 1)[0] for name in PEERS}
#: How to make the peers importable.
INSTALL_HINT = "pip install -e '.[peers]' -c requirements.lock  (kronfluence, dattri and traker)"
_KRONFLUENCE_STRATEGY = {"kronfluence_ekfac": "ekfac", "kronfluence_kfac": "kfac", "kronfluence_identity": "identity"}


class PeerUnavailable(ImportError):
    """A peer's library is not installed; the message says how to install it."""


def _check_name(name: str) -> str:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {PEERS}.")
    return name


def unsupported(param) -> str | None:
    """Why the peers cannot score the fine-tuning model ``param``, or ``None`` when they can.

    The adapters wrap the head-mode :class:`~ecif.core.heads.LoRAHeads` (two LoRA projections and
    the logit scale) as an ``nn.Module`` whose linear layers the libraries hook. Block mode's
    adapters live inside functional transformer blocks over cached activations
    (:class:`~ecif.core.blocks.BlockLoRA`), which no library can hook as it stands."""
    if isinstance(param, LoRAHeads):
        return None
    return (f"the peer adapters wrap the head-mode LoRA heads; this fit's model is {type(param).__name__} "
            "(finetune.mode: blocks). Run the peers on a head-mode fit: finetune.mode: head")


def available(name: str) -> bool:
    """Whether peer ``name``'s library is importable here."""
    return importlib.util.find_spec(PEER_LIBRARY[_check_name(name)]) is not None


def _require(name: str) -> None:
    if not available(name):
        raise PeerUnavailable(f"peer {name!r} needs the package {PEER_LIBRARY[name]!r}, which is not installed. "
                              f"Fix: {INSTALL_HINT}, or drop {name!r} from params.yaml peers.methods.")


# ------------------------------------------------------------------ the model as a torch module


class HeadsModule(nn.Module):
    """:class:`~ecif.core.heads.LoRAHeads` as an ``nn.Module`` (what the libraries take).

    The four LoRA factors are bias-free ``nn.Linear`` layers (``A: d -> r``, ``B: r -> e``), the
    frozen base projections are buffers, the log logit-scale ``t`` the weight of a bias-free
    ``nn.Linear(1, 1)`` applied to a constant 1. The
    parameters, flattened row-major, are exactly the kit's ``theta``
    (:meth:`theta`; ``named_parameters`` order differs, which no library depends on).
    ``forward(x, y)`` maps features of any leading shape to the unnormalised
    embeddings ``(W_img x, W_txt y)`` and ``t`` once per example, ``(N, 1)``.
    """

    def __init__(self, param: LoRAHeads, theta: torch.Tensor):
        super().__init__()
        if not isinstance(param, LoRAHeads):
            raise TypeError(f"the peers take LoRAHeads (the kit's fine-tuning model), got {type(param).__name__}.")
        theta = param.check_theta(theta).detach().cpu()
        a_i, b_i, a_t, b_t = param.factors(theta)
        r, e = param.rank, param.width
        with torch.random.fork_rng(devices=[]):  # nn.Linear's random init must not move the global generator
            self._layers(param, r, e)
        with torch.no_grad():
            for layer, w in ((self.a_img, a_i), (self.b_img, b_i), (self.a_txt, a_t), (self.b_txt, b_t),
                             (self.scale, theta[-1:].reshape(1, 1))):
                layer.weight.copy_(w)
        self.register_buffer("w_img0", param.w_img0.detach().cpu().clone())
        self.register_buffer("w_txt0", param.w_txt0.detach().cpu().clone())

    def _layers(self, param: LoRAHeads, r: int, e: int) -> None:
        self.a_img = nn.Linear(param.d_img, r, bias=False, dtype=DTYPE)
        self.b_img = nn.Linear(r, e, bias=False, dtype=DTYPE)
        self.a_txt = nn.Linear(param.d_txt, r, bias=False, dtype=DTYPE)
        self.b_txt = nn.Linear(r, e, bias=False, dtype=DTYPE)
        # the log logit-scale as a 1 -> 1 linear map of a constant 1: a module kronfluence can track
        self.scale = nn.Linear(1, 1, bias=False, dtype=DTYPE)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.scale(torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device))  # (N, 1): one per example
        return x @ self.w_img0.T + self.b_img(self.a_img(x)), y @ self.w_txt0.T + self.b_txt(self.a_txt(y)), t

    def theta(self) -> torch.Tensor:
        """The parameters as the kit's flat ``theta`` (also the order of ``named_parameters``)."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])


# ------------------------------------------------------------------ examples: one per pair, carrying its batch


@dataclass
class PairExamples:
    """Library examples: ``x (N, ..., b, d_img)``, ``y (N, ..., b, d_txt)``, ``keep (N, ..., b)``
    (bool, real slots), ``weight (N, ..., b)`` (what each slot's ``Pos`` counts for)."""

    x: torch.Tensor
    y: torch.Tensor
    keep: torch.Tensor
    weight: torch.Tensor

    def dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x, self.y, self.keep, self.weight)

    def __len__(self) -> int:
        return self.x.shape[0]


def _check_objective(objective: ContrastiveObjective, what: str) -> None:
    if not isinstance(objective, ContrastiveObjective):
        raise TypeError(f"{what} must be a ContrastiveObjective, got {type(objective).__name__}.")
    if objective.removed.size:
        raise ValueError(f"{what} has removed pairs; the peers score the full objective.")


def train_examples(objective: ContrastiveObjective) -> PairExamples:
    """One example per training pair ``k`` (in pair order): its batch's features (padded slots
    hold pair ``index[m, 0]``'s features, masked), the keep mask, and weight 1 on ``k``'s slot.
    Its loss (:func:`example_losses`) is ``Pos_k``."""
    _check_objective(objective, "objective")
    index, keep = objective.index.cpu(), objective.keep.cpu()
    x, y = objective._x.cpu(), objective._y.cpu()
    dev = index.device  # the examples are built on the CPU (the libraries move them)
    m_of, slot_of = (torch.empty(objective.n, dtype=torch.long, device=dev),
                     torch.empty(objective.n, dtype=torch.long, device=dev))
    rows, cols = torch.nonzero(keep, as_tuple=True)
    m_of[index[rows, cols]], slot_of[index[rows, cols]] = rows, cols
    idx = index[m_of]  # (n, b)
    weight = torch.zeros(idx.shape, dtype=DTYPE, device=dev)
    weight[torch.arange(objective.n, device=dev), slot_of] = 1.0
    return PairExamples(x[idx], y[idx], keep[m_of].clone(), weight)


def query_example(val_objective: ContrastiveObjective) -> PairExamples:
    """One example holding all validation batches ``(1, M, b, d)``, weights ``1/n_val`` on kept
    slots: its loss is ``L_val`` (the validation contrastive loss, no regulariser)."""
    _check_objective(val_objective, "val_objective")
    index, keep = val_objective.index.cpu(), val_objective.keep.cpu()
    x, y = val_objective._x.cpu(), val_objective._y.cpu()
    weight = keep.to(DTYPE) / val_objective.n
    return PairExamples(x[index][None], y[index][None], keep[None].clone(), weight[None])


def _similarities(u_raw, w_raw, log_scale):
    """``exp(t) <u, w>`` of each example's batches, ``(N, ..., b, b)``; ``log_scale (N, 1)``."""
    u = u_raw / u_raw.norm(dim=-1, keepdim=True)
    w = w_raw / w_raw.norm(dim=-1, keepdim=True)
    s = u @ w.transpose(-1, -2)
    return torch.exp(log_scale.reshape(-1, *([1] * (s.ndim - 1)))) * s


def example_losses(module: HeadsModule, x, y, keep, weight) -> torch.Tensor:
    """Per-example loss ``sum_slots weight * Pos_slot`` over each example's batches, shape
    ``(N,)``; every pair's embedding is recomputed from the module's parameters."""
    n_ex, b = x.shape[0], x.shape[-2]
    s = _similarities(*module(x, y)).reshape(-1, b, b)
    pos = terms.pos(s, terms.masks(keep.reshape(-1, b)))
    return (pos * weight.reshape(-1, b)).reshape(n_ex, -1).sum(dim=1)


@contextlib.contextmanager
def _float64_default():
    """The libraries allocate score buffers with the default dtype: float64 while they run."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ kronfluence


def _kronfluence_task(track_logit_scale: bool):
    from kronfluence.task import Task

    tracked = None if track_logit_scale else ["a_img", "b_img", "a_txt", "b_txt"]

    class KronfluenceTask(Task):
        """Per-example training loss ``Pos_k`` (summed over a batch of examples, as kronfluence
        expects), measurement ``L_val``; ``sample=True`` draws the targets of the pair's row and
        column from the model's softmax (true Fisher)."""

        def compute_train_loss(self, batch, model, sample=False):
            x, y, keep, weight = batch
            if not sample:
                return example_losses(model, x, y, keep, weight).sum()
            b = x.shape[-2]
            s = _similarities(*model(x, y)).reshape(-1, b, b)
            masked = torch.where(terms.masks(keep.reshape(-1, b)).pairs, s, torch.full_like(s, -1e30))
            slot = weight.reshape(-1, b).argmax(dim=1)
            rows = masked[torch.arange(len(slot), device=masked.device), slot]  # image k against the batch's texts
            cols = masked[torch.arange(len(slot), device=masked.device), :, slot]  # text k against the batch's images
            with torch.no_grad():
                t_row = torch.multinomial(torch.softmax(rows, dim=1), 1).squeeze(1)
                t_col = torch.multinomial(torch.softmax(cols, dim=1), 1).squeeze(1)
            ce = nn.functional.cross_entropy
            return ce(rows, t_row, reduction="sum") + ce(cols, t_col, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y, keep, weight = batch
            return example_losses(model, x, y, keep, weight).sum()

        def get_influence_tracked_modules(self):
            return tracked

        def get_attention_mask(self, batch):
            return batch[2].long()  # kronfluence counts tokens as integers

    return KronfluenceTask()


def _kronfluence_raw(strategy: str, module: HeadsModule, train: PairExamples, query: PairExamples, damping: float,
                     seed: int, batch_size: int, track_logit_scale: bool) -> np.ndarray:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    task = _kronfluence_task(track_logit_scale)
    model = prepare_model(module, task)
    f64 = dict(per_sample_gradient_dtype=DTYPE)
    factor_args = FactorArguments(strategy=strategy, activation_covariance_dtype=DTYPE, gradient_covariance_dtype=DTYPE,
                                  eigendecomposition_dtype=DTYPE, lambda_dtype=DTYPE, **f64)
    score_args = ScoreArguments(damping_factor=damping, precondition_dtype=DTYPE, score_dtype=DTYPE, **f64)
    with (tempfile.TemporaryDirectory(prefix="ecif-kronfluence-") as out, _float64_default(),
          torch.random.fork_rng(devices=[])):  # the global generator is restored afterwards
        torch.manual_seed(seed)  # the true-Fisher samples
        analyzer = Analyzer(analysis_name="ecif", model=model, task=task, cpu=True, disable_tqdm=True,
                            output_dir=out)
        kwargs = DataLoaderKwargs(num_workers=0)
        analyzer.fit_all_factors("f", dataset=train.dataset(), per_device_batch_size=batch_size,
                                 factor_args=factor_args, dataloader_kwargs=kwargs, overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("s", "f", query_dataset=query.dataset(), train_dataset=train.dataset(),
                                         per_device_query_batch_size=1, per_device_train_batch_size=batch_size,
                                         score_args=score_args, dataloader_kwargs=kwargs, overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("s")["all_modules"]
    return scores[0].detach().cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------ dattri


def _dattri_raw(solver: str, module: HeadsModule, train: PairExamples, query: PairExamples, damping: float,
                cg_max_iter: int, cg_tol: float) -> np.ndarray:
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.task import AttributionTask

    def loss(params, data):
        """Mean per-example loss of ``data`` (one example: ``Pos_k``; the val example: ``L_val``)."""
        x, y, keep, weight = data
        return example_losses(_Functional(module, params), x, y, keep, weight).sum() / x.shape[0]

    checkpoint = {k: v.detach().clone() for k, v in module.state_dict().items()}
    task = AttributionTask(loss_func=loss, model=module, checkpoints=checkpoint)
    if solver == "explicit":
        attributor = IFAttributorExplicit(task=task, device="cpu", regularization=damping)
    else:
        attributor = IFAttributorCG(task=task, device="cpu", regularization=damping, max_iter=cg_max_iter, tol=cg_tol)
    data = train.dataset()
    full = torch.utils.data.DataLoader(data, batch_size=len(data), shuffle=False)  # one batch: the full Hessian
    # no_grad: torch.func's transforms still differentiate inside, but no autograd graph is kept
    # across the CG iterations (without it memory grows with every iteration: 21 GB on the digits fit)
    with _float64_default(), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # dattri's progress bars
        attributor.cache(full)
        # all pairs in one batch: dattri reruns the CG solve for every train batch
        query_loader = torch.utils.data.DataLoader(query.dataset(), batch_size=1, shuffle=False)
        scores = attributor.attribute(full, query_loader)
    return scores[:, 0].detach().cpu().numpy().astype(np.float64)


class _Functional:
    """``module`` called with the parameters ``params`` (a name -> tensor dict), as dattri's
    ``torch.func`` style needs."""

    def __init__(self, module: HeadsModule, params: dict):
        self.module, self.params = module, params

    def __call__(self, x, y):
        return torch.func.functional_call(self.module, self.params, (x, y))


# ------------------------------------------------------------------ public entry


@dataclass
class PeerResult:
    """A peer's scores of every training pair in the kit's convention (``scores = raw / n``,
    negative = harmful; ``trak``: ``scores = raw``, the kit's sign, not its scale), the
    library's raw output, and the wall time of the whole call (factors, solve or TRAK's
    checkpoint refits included)."""

    name: str
    scores: np.ndarray
    raw: np.ndarray
    seconds: float


def peer_scores(name: str, objective: ContrastiveObjective, val_objective: ContrastiveObjective,
                theta_hat: torch.Tensor, *, damping: float | None = None, seed: int = 0, cg_max_iter: int = 50,
                cg_tol: float = 1e-10, batch_size: int = 64, track_logit_scale: bool = True, proj_dim: int = 2048,
                checkpoints: int = 1) -> PeerResult:
    """Influence of every training pair on ``L_val`` by peer ``name`` (:data:`PEERS`), at
    ``theta_hat``, in the kit's sign and scale (module docstring; ``trak``: the kit's sign only).

    ``damping``: the ``lam * I`` added to the library's curvature; ``None`` = ``objective.lam``
    (the exact Hessian of the L2 pull, as the kit's own influence uses). ``seed``: kronfluence's
    true-Fisher samples. ``cg_max_iter``, ``cg_tol``: dattri's CG. ``batch_size``: examples per
    kronfluence batch (dattri takes all pairs in one batch; its CG has no tolerance stop, so
    ``cg_tol`` is passed but every solve runs ``cg_max_iter`` iterations; ``trak`` featurises
    ``batch_size`` examples at a time). ``track_logit_scale``: whether kronfluence tracks the
    logit scale's 1 -> 1 linear map (``False``: only the four LoRA factors, as kronfluence sees a
    CLIP whose ``logit_scale`` is a bare ``nn.Parameter``), for ``trak`` whether its margins use
    the logits ``exp(t) cos`` (``False``: plain cosines, as TRAK's CLIP output); dattri always
    differentiates every parameter. ``proj_dim``, ``checkpoints``: TRAK's projection dimension
    and number of checkpoints (refits on random halves, seeded by ``seed``; 1 = ``theta_hat``
    alone); ``damping`` enters TRAK as ``lambda_reg = n damping proj_dim / P``
    (:mod:`ecif.experiments.trak_peer`). Runs on the CPU in float64 (TRAK: float32).
    Raises :class:`PeerUnavailable` when the library is missing."""
    _check_name(name)
    _require(name)
    _check_objective(objective, "objective")
    _check_objective(val_objective, "val_objective")
    if val_objective.lam != 0.0:
        raise ValueError("val_objective must be built with lam=0: the measurement is the validation loss.")
    if val_objective.param is not objective.param:
        raise ValueError("objective and val_objective must share one parametrization.")
    damping = objective.lam if damping is None else float(damping)
    if not (np.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping}.")
    if batch_size < 1 or cg_max_iter < 1:
        raise ValueError(f"batch_size and cg_max_iter must be >= 1, got {batch_size} and {cg_max_iter}.")
    if proj_dim < 1 or checkpoints < 1:
        raise ValueError(f"proj_dim and checkpoints (TRAK) must be >= 1, got {proj_dim} and {checkpoints}.")
    start = time.perf_counter()
    with warnings.catch_warnings():  # the libraries' deprecation notices about torch APIs, not about this use
        warnings.simplefilter("ignore", FutureWarning)
        if name == "trak":
            from ecif.experiments.trak_peer import trak_raw

            raw = trak_raw(objective, val_objective, objective.param.check_theta(theta_hat).detach(),
                           damping=damping, proj_dim=proj_dim, checkpoints=checkpoints, seed=seed,
                           batch_size=batch_size, track_logit_scale=track_logit_scale)
        else:
            raw = _run(name, objective, val_objective, theta_hat, damping, seed, cg_max_iter, cg_tol, batch_size,
                       track_logit_scale)
    seconds = time.perf_counter() - start
    if raw.shape != (objective.n,) or not np.isfinite(raw).all():
        raise RuntimeError(f"peer {name} returned {raw.shape} scores (finite: {bool(np.isfinite(raw).all())}); "
                           f"expected {objective.n} finite values.")
    return PeerResult(name, raw if name == "trak" else raw / objective.n, raw, seconds)


def _run(name, objective, val_objective, theta_hat, damping, seed, cg_max_iter, cg_tol, batch_size,
         track_logit_scale) -> np.ndarray:
    module = HeadsModule(objective.param, theta_hat)
    train, query = train_examples(objective), query_example(val_objective)
    if name in _KRONFLUENCE_STRATEGY:
        return _kronfluence_raw(_KRONFLUENCE_STRATEGY[name], module, train, query, damping, seed, batch_size,
                                track_logit_scale)
    return _dattri_raw(name.split("_", 1)[1], module, train, query, damping, cg_max_iter, cg_tol)


def agreement(scores: np.ndarray, loo_pairs, loo_actual, loo_misaligned, mask) -> dict:
    """How scores of every training pair (kit convention, ``(n,)``) do against leave-one-out
    retraining and as a detector: ``pearson``/``spearman`` against ``loo_actual`` on the LOO
    pairs ``loo_pairs``, the same on its clean pairs only (``*_clean``, ``loo_misaligned``
    false), and ``auroc`` of ``-IS`` for the misaligned ``mask`` over all training pairs."""
    scores = np.asarray(scores, dtype=np.float64)
    pairs, actual = np.asarray(loo_pairs, dtype=np.int64), np.asarray(loo_actual, dtype=np.float64)
    clean = ~np.asarray(loo_misaligned, dtype=bool)
    if scores.ndim != 1 or pairs.shape != actual.shape or clean.shape != actual.shape:
        raise ValueError("scores must be (n,), and the LOO pairs, changes and misaligned flags of one length.")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= scores.size):
        raise ValueError(f"LOO pairs must index the {scores.size} scored pairs.")
    every, only_clean = loo_agreement(scores[pairs], actual), loo_agreement(scores[pairs][clean], actual[clean])
    return {"pearson": every["pearson"], "spearman": every["spearman"], "pearson_clean": only_clean["pearson"],
            "spearman_clean": only_clean["spearman"], "auroc": auroc(harmfulness(scores), mask)}
