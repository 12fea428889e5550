"""TRAK (the ``traker`` package) as a peer of stage peers: its CLIP recipe on the kit's fixed batches.

One job: run TRAK on the fitted LoRA-heads problem the way its CLIP documentation prescribes,
adapted to the kit's fixed batches, and return one score per training pair. The library-neutral
parts (the heads as an ``nn.Module``, one example per pair carrying its batch) are those of
:mod:`ecif.experiments.peers`.

**TRAK in one paragraph.** TRAK models the training run through a *model output* ``f(z, theta)``
per example (for classification and CLIP: a margin, the log-odds of the right match) and an
*out-to-loss* weight ``Q(z) = 1 - p(z)`` (``p`` the softmax probability of the right match, so
``dloss/df = -Q``). At a checkpoint it forms the projected, normalised output gradients
``phi_i = R^T grad f(z_i) / sqrt(P)`` (``R``: a ``P x k`` random matrix, ``P`` parameters, ``k``
the projection dimension), stacks them into ``Phi (n, k)`` and scores a target ``z'`` by
``tau(z', z_i) = Q_i phi_i^T (Phi^T Phi + lambda_reg I)^-1 phi(z') * c`` (``c`` a positive
per-checkpoint normalisation of the inverse); over several checkpoints it averages the
``phi_i^T (...)^-1 phi(z')`` parts and the ``Q_i`` separately and multiplies them.
``tau > 0``: including ``z_i`` raises the target's output.

**The model output, adapted.** TRAK's CLIP output of a pair ``k`` is the sum of its two margins,
image-to-texts and text-to-images, against a *simulated batch* of other pairs' embeddings that
it samples from a bank computed once (frozen), with ``Q_k = 1 - (p_row + p_col) / 2``
(``p_row``, ``p_col``: the softmax probabilities of the right match in ``k``'s row and column,
at the model's logit scale). In the kit every pair has a **fixed batch**, so the simulated batch
is that batch: with ``s = exp(t) cos(u_a, w_b)`` the batch's logits (the kit's similarities,
:meth:`ContrastiveObjective.similarity`),

    m_row(k) = s_kk - logsumexp_{j != k} s_kj,      m_col(k) = s_kk - logsumexp_{j != k} s_jk,
    f_k = m_row(k) + m_col(k),                      Q_k = 1 - (sigmoid(m_row) + sigmoid(m_col)) / 2,

over the kept slots of the batch, every embedding **recomputed** from the parameters (the batch
travels with the example, as for the other peers; TRAK freezes its bank only because it samples
from the whole data set). The pair's own InfoNCE terms are ``Pos_k = softplus(-m_row) +
softplus(-m_col)``, so ``grad Pos_k = -(1 - p_row) grad m_row - (1 - p_col) grad m_col``: TRAK's
single output per example with one ``Q`` sums the two margins and averages their weights, which
is exact only when ``p_row = p_col`` (tested: the margins and this identity against the kit's
``Pos_k`` and its per-pair gradients). TRAK's CLIP output uses the cosine similarities *without*
the logit scale (``track_logit_scale=False`` reproduces that: ``t`` then gets no gradient and
TRAK does not see it; ``Q`` still uses ``exp(t)``); the default uses the kit's logits, whose
softmax gives the ``p`` in ``Q``. What no per-example output can carry, as for the other peers,
is ``k``'s role as a negative in the other pairs' terms.

**The measurement.** The target is one example holding all validation batches (as
:func:`ecif.experiments.peers.query_example`) whose "output" is ``-L_val`` (minus the validation
contrastive loss, the kit's measurement; higher = better, as TRAK's outputs). So
``tau_k ~ (-L_val)(with k) - (-L_val)(without k) = L_val(theta_{-k}) - L_val(theta_hat)``: the
kit's sign (negative = harmful) with no sign flip. TRAK's values are **not** in loss units (the
per-checkpoint normalisation ``c``, the averaged ``Q``, the unweighted ``Phi^T Phi`` in place of
a Hessian): only scale-free comparisons (Pearson, Spearman, AUROC) are meaningful.

**Settings, chosen a priori (not against the leave-one-out refits).**

- Projection: TRAK's CPU projector, :class:`trak.projectors.BasicProjector` with
  ``ProjectionType.normal`` (Gaussian entries; what TRAK itself picks on a CPU, its CUDA
  projector ``fast_jl`` needs a GPU), ``k = proj_dim`` = TRAK's default 2048. TRAK's documented
  range (about 1,000 to 40,000) is for models with millions of parameters; the heads have
  ``P`` of a few hundred, and any ``k >= P`` keeps all of the gradient (the projection is
  cheap at this size), so the default is kept.
- Regularisation: ``Phi^T Phi`` is a sum of ``n`` rank-one terms; with ``k > n`` (or ``P > n``)
  it is singular, and TRAK's default ``lambda_reg = 0`` would invert noise. The kit's L2 pull
  ``(lam/2)||theta - theta0||^2`` is the regulariser the other peers get as damping ``lam I``; in
  TRAK's normalised projected space the same pull is ``lambda_reg = n lam k / P``
  (``||R^T g||^2 / P ~ (k / P) ||g||^2``; for ``k >> P`` the push-through identity gives
  ``G (G^T G + n lam I)^-1 g'`` for ``Phi (Phi^T Phi + lambda_reg)^-1 phi'``), ``damping``
  replacing ``lam`` when given.
- Checkpoints: TRAK's documentation says several checkpoints improve it markedly, and its
  paper ensembles models trained on random subsets of the training set. The kit's fit is
  deterministic given the data, so independent checkpoints need different data:
  ``checkpoints`` refits (:func:`ecif.experiments.retraining.retrain`, warm-started at
  ``theta_hat``) on random halves of the training pairs (drawn within each fixed batch, so that
  no batch is emptied; seeded by ``seed``; a half whose refit does not converge is replaced by
  the next draw), each featurised on
  **all** ``n`` pairs with its own projection (TRAK's ``model_id`` seeds). ``checkpoints=1``:
  the fitted ``theta_hat`` alone, the default: on the test problem (60 pairs, batches of 16)
  some halves are separable, their refits run the logit scale away and stop only at the
  iteration limit, and 10 checkpoints took 345 s against 2.6 s for one; the ensemble is
  not cheap in general (on the digits fit each half refit converges but takes about 40 s), so
  it is an option (``peers.trak_checkpoints``), not the default.
- Precision: TRAK offers float16 or float32; float32 (``use_half_precision=False``). Its inverse
  is float32 as well, so agreement with a float64 reference is to about 1e-4.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile

import numpy as np
import torch

from ecif.core import terms
from ecif.core.objective import ContrastiveObjective
from ecif.experiments.peers import HeadsModule, PairExamples, _similarities, query_example, train_examples
from ecif.experiments.retraining import retrain

__all__ = ["margins", "out_to_loss", "example_outputs", "half_subsets", "trak_lambda", "trak_raw"]


def margins(module: HeadsModule, x, y, keep, track_logit_scale: bool = True):
    """Row and column margins of every slot of every batch, each ``(N*, b)`` (``N*``: the
    examples' leading dims flattened): ``m_row = s_kk - logsumexp_{j != k} s_kj`` over kept
    slots, ``m_col`` the same down the column; ``s`` the kit's logits ``exp(t) cos`` (plain
    cosines when ``track_logit_scale=False``); padded slots hold finite garbage."""
    b = x.shape[-2]
    u_raw, w_raw, log_scale = module(x, y)
    s = _similarities(u_raw, w_raw, log_scale if track_logit_scale else torch.zeros_like(log_scale))
    s = s.reshape(-1, b, b)
    m = terms.masks(keep.reshape(-1, b))
    off = torch.where(m.offdiag, s, torch.full_like(s, terms._MASKED))
    diag = torch.diagonal(s, dim1=1, dim2=2)
    return diag - torch.logsumexp(off, dim=2), diag - torch.logsumexp(off, dim=1)


def out_to_loss(module: HeadsModule, x, y, keep, weight) -> torch.Tensor:
    """TRAK's CLIP out-to-loss weight ``Q = 1 - (p_row + p_col) / 2`` of each example's weighted
    slot, at the model's logit scale, ``(N,)`` (no gradient)."""
    with torch.no_grad():
        m_row, m_col = margins(module, x, y, keep, True)
        q = 1.0 - (torch.sigmoid(m_row) + torch.sigmoid(m_col)) / 2.0
        return (q * weight.reshape(q.shape)).reshape(x.shape[0], -1).sum(dim=1)


def example_outputs(module: HeadsModule, x, y, keep, weight, loss_weight, track_logit_scale: bool = True):
    """TRAK's model output of each example, ``(N,)``: ``sum_slots weight * (m_row + m_col) -
    sum_slots loss_weight * Pos_slot`` (a training pair: ``weight`` one-hot, ``loss_weight`` 0;
    the validation target: ``weight`` 0, ``loss_weight = 1/n_val``, i.e. ``-L_val``)."""
    n_ex, b = x.shape[0], x.shape[-2]
    m_row, m_col = margins(module, x, y, keep, track_logit_scale)
    f = ((m_row + m_col) * weight.reshape(-1, b)).reshape(n_ex, -1).sum(dim=1)
    if not track_logit_scale:  # Pos needs the kit's logits
        m_row, m_col = margins(module, x, y, keep, True)
    pos = torch.nn.functional.softplus(-m_row) + torch.nn.functional.softplus(-m_col)
    pos = torch.where(keep.reshape(-1, b), pos, torch.zeros_like(pos))
    return f - (pos * loss_weight.reshape(-1, b)).reshape(n_ex, -1).sum(dim=1)


def _model_output(track_logit_scale: bool):
    from trak.modelout_functions import AbstractModelOutput

    class FixedBatchCLIPOutput(AbstractModelOutput):
        """TRAK's CLIP model output with the pair's fixed batch as the simulated batch."""

        def __init__(self):
            super().__init__()

        @staticmethod
        def get_output(model, weights, buffers, x, y, keep, weight, loss_weight):
            # one example (TRAK vmaps over examples): give it the leading example dim back
            def module(a, c):
                return torch.func.functional_call(model, (weights, buffers), (a, c))

            args = [v[None] for v in (x, y, keep, weight, loss_weight)]
            return example_outputs(module, *args, track_logit_scale=track_logit_scale).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            x, y, keep, weight, _ = batch
            return out_to_loss(model, x, y, keep, weight)[:, None]

    return FixedBatchCLIPOutput()


def half_subsets(batch_ids, count: int, seed: int) -> list[np.ndarray]:
    """``count`` random halves of the training pairs, drawn within each fixed batch (``ceil(b_m /
    2)`` of batch ``m``'s ``b_m`` pairs kept, so no batch is emptied): sorted index arrays of the
    **kept** pairs. ``batch_ids (n,)``: each pair's batch."""
    batch_ids = np.asarray(batch_ids)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(batch_ids == m) for m in np.unique(batch_ids)]
    return [np.sort(np.concatenate([rng.permutation(idx)[: (len(idx) + 1) // 2] for idx in members]))
            for _ in range(count)]


def trak_lambda(n: int, lam: float, proj_dim: int, n_params: int) -> float:
    """TRAK's ``lambda_reg`` equal to the kit's L2 pull ``lam`` in its normalised projected
    space: ``n lam k / P`` (module docstring)."""
    return n * lam * proj_dim / n_params


def _checkpoints(objective: ContrastiveObjective, theta_hat: torch.Tensor, count: int, seed: int):
    """``theta_hat`` (``count == 1``) or ``count`` converged refits on random halves; a half whose
    refit does not converge (e.g. a separable half that drives the logit scale up) is replaced by
    the next draw, at most ``2 * count`` extra draws."""
    if count == 1:
        return [theta_hat]
    thetas, draws = [], half_subsets(objective.batching.batch_ids, 3 * count, seed)
    for keep_idx in draws:
        res = retrain(objective, theta_hat, np.setdiff1d(np.arange(objective.n), keep_idx))
        if res.converged:
            thetas.append(res.theta)
        if len(thetas) == count:
            return thetas
    raise RuntimeError(f"only {len(thetas)} of {3 * count} TRAK checkpoint refits on random halves converged; "
                       f"use checkpoints: 1 (theta_hat alone) or larger batches.")


def _with_loss_weight(ex: PairExamples, target: bool) -> list[torch.Tensor]:
    """The example tensors TRAK takes: ``x, y, keep, weight, loss_weight`` (module docstring)."""
    if target:  # -L_val: no margin, the loss weights on Pos
        return [ex.x, ex.y, ex.keep, torch.zeros_like(ex.weight), ex.weight]
    return [ex.x, ex.y, ex.keep, ex.weight, torch.zeros_like(ex.weight)]


def trak_raw(objective: ContrastiveObjective, val_objective: ContrastiveObjective, theta_hat: torch.Tensor, *,
             damping: float, proj_dim: int, checkpoints: int, seed: int, batch_size: int,
             track_logit_scale: bool) -> np.ndarray:
    """TRAK's score of every training pair for the target ``-L_val``, ``(n,)`` (module
    docstring), on the CPU, averaged over ``checkpoints`` checkpoints."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    n, p = objective.n, objective.n_params
    thetas = _checkpoints(objective, theta_hat, checkpoints, seed)
    module = HeadsModule(objective.param, theta_hat)
    train = _with_loss_weight(train_examples(objective), target=False)
    query = _with_loss_weight(query_example(val_objective), target=True)
    projector = BasicProjector(grad_dim=p, proj_dim=proj_dim, seed=seed, proj_type=ProjectionType.normal,
                               device="cpu", dtype=torch.float32)
    with (tempfile.TemporaryDirectory(prefix="ecif-trak-") as out, contextlib.redirect_stderr(io.StringIO()),
          torch.random.fork_rng(devices=[])):
        traker = TRAKer(model=module, task=_model_output(track_logit_scale), train_set_size=n, save_dir=out,
                        device="cpu", projector=projector, use_half_precision=False,
                        lambda_reg=trak_lambda(n, damping, proj_dim, p), logging_level=logging.ERROR)
        states = [HeadsModule(objective.param, th).state_dict() for th in thetas]
        for model_id, state in enumerate(states):
            traker.load_checkpoint(state, model_id=model_id)
            for start in range(0, n, batch_size):
                traker.featurize(batch=[t[start:start + batch_size] for t in train], num_samples=min(batch_size,
                                                                                                      n - start))
        traker.finalize_features()
        if not projector.proj_matrix_available and projector.num_blocks == 1:
            # traker 0.3.2: finalize_features frees a one-block projection matrix that scoring the
            # same model_id then never regenerates (AttributeError); regenerate it as it was
            projector.generate_sketch_matrix(projector.generator_states[0])
        for model_id, state in enumerate(states):
            traker.start_scoring_checkpoint(exp_name="val", checkpoint=state, model_id=model_id, num_targets=1)
            traker.score(batch=query, num_samples=1)
        scores = traker.finalize_scores(exp_name="val")
    return np.asarray(scores, dtype=np.float64)[:, 0]
