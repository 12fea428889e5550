"""Repairing a systematic caption swap: by editing the text tower, or by changing the data.

Setting: a head-mode fit (LoRA on the two final projections over frozen pooled features) on
train pairs where one attribute value was systematically replaced in the captions (e.g. every
corrupted circle is captioned "triangle"). The fitted model has learnt the wrong association
for one *word*, the swapped-in value (here "triangle"). Four repairs of the fitted model
``theta_hat`` are compared (:func:`run_repairs`, :func:`repair_table`):

- ``edit``: a closed-form key-value edit of one MLP output projection of the frozen text tower
  (docs/math.md §19, :mod:`ecif.core.rank_one`), at the token of the word. The keys are the
  inputs of that linear map at the word's token in a few correctly captioned pairs; the target
  value adds to the layer's output there a shift ``delta`` found by a few gradient steps, such
  that the captions, encoded by the edited tower and embedded by the fitted head ``theta_hat``,
  are nearest to the image-class centroid of their own class (reference images, not the test
  images); the key second moment ``C`` comes from the keys at every token of ordinary captions.
  The head stays ``theta_hat``; the text features change (only much where the word occurs);
- ``ecif_top_k``: remove the pairs with the ``k`` highest detection scores of the influence
  engine and retrain (warm, :func:`ecif.experiments.retraining.retrain`);
- ``oracle``: remove exactly the injected pairs and retrain;
- ``finetune``: add the same few correctly captioned pairs to the training objective (spread
  round-robin over the existing batches) and refit from ``theta_hat``.

Evaluation (:func:`evaluate`), with class centroids of the evaluation images (the mean of their
normalised embeddings per class, renormalised) as the targets of caption classification:

==================  =========================================================================
``efficacy``        caption -> image-class accuracy of the evaluation captions that contain
                    the word (the data set's own caption template)
``generalisation``  the same items captioned with other templates (:data:`ALT_TEMPLATES`)
``specificity``     caption -> image-class accuracy of the evaluation captions *without* the word
``unrelated_drift`` mean ``1 - cos`` between each word-free caption's embedding after the repair
                    and before it (0: untouched)
``zero_shot``       image -> class-prompt accuracy of the evaluation images (the kit's test)
``seconds``         wall time of the repair itself (keys, covariance, value search and solve
                    for the edit; the refit for the others), excluding evaluation
==================  =========================================================================

Tower access: the MLP output projection of layer ``l`` of an open_clip Hugging Face text tower
(BERT-like: ``encoder.layer[l].output.dense``) or of open_clip's own text transformer
(``resblocks[l].mlp.c_proj``), :func:`mlp_output_projection`. Token positions assume the
tokenizer pads with id 0 and wraps a text in one start and one end token (both true for the
Hugging Face BERT tokenizer and the CLIP tokenizer of open_clip).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ecif.core.fit import fit
from ecif.core.objective import ContrastiveObjective
from ecif.core.rank_one import rank_one_edit
from ecif.core.terms import DTYPE
from ecif.core.batching import BatchingProtocol
from ecif.experiments.cleaning import top_fraction
from ecif.experiments.retraining import retrain
from ecif.experiments.zeroshot import ZeroShotSet

__all__ = ["ALT_TEMPLATES", "METRICS", "REPAIRS", "RepairCase", "Repaired", "add_pairs", "caption_sets",
           "collect_keys", "edited_weight", "evaluate", "key_mask", "key_second_moment", "mentions", "mlp_output_projection",
           "optimise_shift", "rank_one_text_edit", "repair_table", "run_repairs", "summarise", "text_features_grad",
           "text_layers"]

#: Caption templates other than the training one, for the generalisation metric.
ALT_TEMPLATES = ("a photo of a {color} {shape}", "{shape}, {color}, {size}", "there is a {size} {shape} in the {position}")
#: The repairs, in reporting order (``none``: the fitted model itself, the reference).
REPAIRS = ("none", "edit", "ecif_top_k", "oracle", "finetune")
#: The metrics of :func:`evaluate`, in reporting order.
METRICS = ("efficacy", "generalisation", "specificity", "unrelated_drift", "zero_shot", "seconds")


# ------------------------------------------------------------------ the text tower


def _layers(model) -> nn.ModuleList:
    text = getattr(model, "text", None)
    hf = getattr(getattr(getattr(text, "transformer", None), "encoder", None), "layer", None)
    if isinstance(hf, nn.ModuleList):
        return hf
    for owner in (text, model):
        blocks = getattr(getattr(owner, "transformer", None), "resblocks", None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(f"{type(model).__name__}: no text transformer layers found (expected an open_clip Hugging Face "
                     "text tower with encoder.layer or an open_clip text transformer with resblocks).")


def text_layers(model) -> int:
    """Number of transformer layers of the text tower."""
    return len(_layers(model))


def mlp_output_projection(model, layer: int | None = None) -> nn.Linear:
    """The ``nn.Linear`` that maps the MLP's hidden activations back to the residual width in
    text layer ``layer`` (``None``: the middle layer, ``text_layers // 2``)."""
    layers = _layers(model)
    layer = len(layers) // 2 if layer is None else int(layer)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must lie in [0, {len(layers)}) (the text tower's layers), got {layer}.")
    block = layers[layer]
    lin = getattr(getattr(block, "output", None), "dense", None)  # BERT-like
    if lin is None:
        lin = getattr(getattr(block, "mlp", None), "c_proj", None)  # open_clip residual block
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"text layer {layer} ({type(block).__name__}) has no MLP output projection nn.Linear.")
    return lin


def _tokens(model, tokenizer, captions) -> torch.Tensor:
    return tokenizer(list(captions)).to(next(model.parameters()).device)


def key_mask(tokenizer, ids: torch.Tensor, word: str | None) -> torch.Tensor:
    """Bool ``(B, T)``: the token positions of ``word`` in the token ids ``ids`` (the last
    sub-token of its first occurrence; rows without it are all False), or every non-padding
    position when ``word`` is ``None``."""
    if word is None:
        return ids != 0
    w = tokenizer([word])[0]
    w = w[1:int((w != 0).sum()) - 1].to(ids.device)  # strip the start and end tokens
    if w.numel() == 0 or w.numel() > ids.shape[1]:
        raise ValueError(f"the tokenizer maps {word!r} to no usable tokens.")
    hit = (ids.unfold(1, w.numel(), 1) == w).all(dim=-1)  # (B, T - L + 1)
    first = torch.where(hit.any(dim=1), hit.double().argmax(dim=1), -1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    rows = torch.nonzero(first >= 0).flatten()
    mask[rows, first[rows] + w.numel() - 1] = True
    return mask


@torch.no_grad()
def collect_keys(model, tokenizer, captions, layer: int | None, word: str | None, batch_size: int = 256) -> torch.Tensor:
    """The keys: inputs ``(m, d_in)`` (float64) of the MLP output projection of ``layer`` at the
    token of ``word`` in each caption that contains it (``word=None``: at every non-padding
    token of every caption)."""
    lin = mlp_output_projection(model, layer)
    got = []
    for i in range(0, len(captions), batch_size):
        ids = _tokens(model, tokenizer, captions[i:i + batch_size])
        mask = key_mask(tokenizer, ids, word)
        seen = {}
        h = lin.register_forward_hook(lambda mod, inp, out: seen.__setitem__("k", inp[0]))
        try:
            model.encode_text(ids)
        finally:
            h.remove()
        got.append(seen["k"][mask].to(DTYPE))
    keys = torch.cat(got)
    if len(keys) == 0:
        raise ValueError(f"no caption contains {word!r}: nothing to take keys from.")
    return keys


def key_second_moment(keys: torch.Tensor, shrink: float = 1e-2) -> torch.Tensor:
    """``C = K^T K / N + shrink * (tr(K^T K / N) / d) I`` (``(d, d)``, float64): the second moment
    of ordinary keys ``(N, d)``, shrunk towards a multiple of the identity so that it is positive
    definite even when the keys span fewer than ``d`` directions."""
    if keys.ndim != 2 or len(keys) < 2:
        raise ValueError(f"keys must be (N >= 2, d), got {tuple(keys.shape)}.")
    if not shrink > 0:
        raise ValueError(f"shrink must be > 0 (C must be positive definite), got {shrink}.")
    k = keys.to(DTYPE)
    c = k.T @ k / len(k)
    d = c.shape[0]
    return c + shrink * float(torch.diagonal(c).mean()) * torch.eye(d, dtype=DTYPE, device=c.device)


@contextlib.contextmanager
def edited_weight(lin: nn.Linear, weight: torch.Tensor):
    """Temporarily replace ``lin.weight`` by ``weight`` (cast to its dtype and device)."""
    saved = lin.weight.data.clone()
    lin.weight.data.copy_(weight.to(saved.dtype).to(saved.device))
    try:
        yield lin
    finally:
        lin.weight.data.copy_(saved)


def text_features_grad(model, tokenizer, captions) -> torch.Tensor:
    """Pre-projection text features ``(B, d_txt)`` (float64, differentiable), as
    :func:`ecif.data.features.text_features` computes them (the final projection removed)."""
    from ecif.data.features import append_bias_feature, without_projection  # one definition of "pre-projection"

    ids = _tokens(model, tokenizer, captions)
    with without_projection(model, "text") as bias:
        y = model.encode_text(ids)
    return append_bias_feature(y, bias).to(DTYPE)


# ------------------------------------------------------------------ the case and the caption sets


def mentions(caption: str, word: str) -> bool:
    """Whether ``word`` occurs in ``caption`` as a whole word (or phrase)."""
    return re.search(rf"\b{re.escape(word)}\b", caption) is not None


@dataclass
class RepairCase:
    """Everything one comparison needs.

    ``model``, ``tokenizer``: the frozen encoder (eval mode); ``param``, ``theta_hat``,
    ``objective``: the fitted heads and the training objective ``L`` (corrupted pairs);
    ``text_mean``: the mean subtracted from text features by the problem's frozen map (``None``
    when uncentred; image features given here are already centred); ``spec``: the caption spec
    (templates, values, label attribute); ``word``: the swapped-in value whose association is
    repaired; ``eval_x`` ``(m, d_img)`` and ``eval_attributes`` (attribute codes ``(m,)``): the
    evaluation images and their true attributes (the test split); ``ref_x``, ``ref_labels``:
    clean reference images (validation split) whose class centroids the edit aims at;
    ``fix_x``, ``fix_captions``: a few correctly captioned extra pairs (the edit's captions are
    those among them that contain ``word``); ``ordinary_captions``: captions whose keys give
    ``C``; ``oracle``: the injected train pairs; ``scores``: detection scores ``(n,)`` (higher
    = more harmful); ``templates``: the generalisation templates; ``info``: free-form facts
    about the case (not used by the comparison)."""

    model: object
    tokenizer: object
    param: object
    theta_hat: torch.Tensor
    objective: ContrastiveObjective
    text_mean: np.ndarray | None
    spec: object
    word: str
    eval_x: torch.Tensor
    eval_attributes: dict
    ref_x: torch.Tensor
    ref_labels: np.ndarray
    fix_x: torch.Tensor
    fix_captions: list
    ordinary_captions: list
    oracle: np.ndarray
    scores: np.ndarray
    templates: tuple = ALT_TEMPLATES
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        la = self.spec.label_attribute
        if la is None or self.word not in self.spec.values[la]:
            raise ValueError(f"word {self.word!r} must be a value of the label attribute {la!r} "
                             f"({None if la is None else self.spec.values[la]}): the metrics classify by it.")
        if len(self.fix_x) != len(self.fix_captions):
            raise ValueError(f"{len(self.fix_x)} fix images but {len(self.fix_captions)} fix captions.")
        if not any(mentions(c, self.word) for c in self.fix_captions):
            raise ValueError(f"no fix caption contains {self.word!r}: the edit has no keys; add such pairs.")

    @property
    def word_captions(self) -> list:
        """The fix captions that contain ``word``: the edit's captions (all of class ``word``)."""
        return [c for c in self.fix_captions if mentions(c, self.word)]

    @property
    def word_label(self) -> int:
        """Class index of ``word``."""
        return self.spec.values[self.spec.label_attribute].index(self.word)

    @property
    def labels_eval(self) -> np.ndarray:
        return np.asarray(self.eval_attributes[self.spec.label_attribute], dtype=np.int64)

    def centre_text(self, y: torch.Tensor) -> torch.Tensor:
        """Text features as the problem's frozen map sees them (minus ``text_mean``)."""
        if self.text_mean is None:
            return y
        return y - torch.as_tensor(np.asarray(self.text_mean), dtype=y.dtype, device=y.device)


def caption_sets(spec, attributes: dict, word: str, templates=ALT_TEMPLATES) -> dict:
    """``{name: (captions, labels)}`` of the evaluation items: ``efficacy`` (items whose label value
    is ``word``, the spec's first template), ``generalisation`` (the same items under every
    template of ``templates``, concatenated), ``specificity`` (the other items, first template:
    captions without ``word``)."""
    la = spec.label_attribute
    codes = {a: np.asarray(v, dtype=np.int64) for a, v in attributes.items()}
    labels = codes[la]
    has = labels == spec.values[la].index(word)

    def render(template, rows):
        names = list(spec.values)
        return [template.format(**{a: spec.values[a][int(codes[a][i])] for a in names}) for i in rows]

    on, off = np.flatnonzero(has), np.flatnonzero(~has)
    gen = [c for t in templates for c in render(t, on)]
    out = {"efficacy": (render(spec.templates[0], on), labels[on]),
           "generalisation": (gen, np.tile(labels[on], len(templates))),
           "specificity": (render(spec.templates[0], off), labels[off])}
    if any(mentions(c, word) for c in out["specificity"][0]):
        raise ValueError(f"captions of other items mention {word!r}; the specificity set must not.")
    return out


# ------------------------------------------------------------------ the edit


def _centroids(param, theta, x, labels, n_classes) -> torch.Tensor:
    u = param.encode_images(theta, x)
    u = u / u.norm(dim=1, keepdim=True)
    lab = torch.as_tensor(np.array(labels, dtype=np.int64), device=u.device)  # a copy: the labels may be read-only
    c = torch.stack([u[lab == j].mean(dim=0) if bool((lab == j).any()) else torch.zeros_like(u[0])
                     for j in range(n_classes)])
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _caption_logits(param, theta, y, centroids) -> torch.Tensor:
    v = param.encode_texts(theta, y)
    v = v / v.norm(dim=1, keepdim=True)
    return torch.exp(param.log_scale(theta)) * v @ centroids.T


@contextlib.contextmanager
def _frozen(model):
    """Temporarily stop gradients to the tower's own weights (only the shift is optimised)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@contextlib.contextmanager
def _shifted_output(lin: nn.Linear, mask: torch.Tensor, shift: torch.Tensor):
    """Add ``shift`` (d_out,) to the output of ``lin`` at the positions ``mask`` (B, T)."""
    m = mask.to(shift.dtype)[..., None]
    h = lin.register_forward_hook(lambda mod, inp, out: out + m.to(out.dtype) * shift.to(out.dtype))
    try:
        yield
    finally:
        h.remove()


def optimise_shift(case: RepairCase, captions, labels, layer: int | None, steps: int = 30, lr: float = 0.05,
                   decay: float = 1e-3) -> torch.Tensor:
    """The output shift ``delta`` ``(d_out,)`` (float32, the tower's dtype) added to the MLP output
    projection of ``layer`` at the word's token: ``steps`` Adam steps (learning rate ``lr``) on
    the mean cross-entropy of the captions' class logits against the reference centroids
    (``exp(t) cos(text embedding, centroid)``, fitted head ``theta_hat``) plus
    ``decay * ||delta||^2``."""
    lin = mlp_output_projection(case.model, layer)
    n_classes = len(case.spec.values[case.spec.label_attribute])
    with torch.no_grad():
        cent = _centroids(case.param, case.theta_hat, case.ref_x, case.ref_labels, n_classes)
    ids = _tokens(case.model, case.tokenizer, captions)
    mask = key_mask(case.tokenizer, ids, case.word)
    y_true = torch.as_tensor(np.asarray(labels), device=cent.device).long()
    shift = torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device, requires_grad=True)
    opt = torch.optim.Adam([shift], lr=lr)
    with _frozen(case.model):
        for _ in range(int(steps)):
            opt.zero_grad()
            with _shifted_output(lin, mask, shift):
                y = case.centre_text(text_features_grad(case.model, case.tokenizer, captions))
            loss = torch.nn.functional.cross_entropy(_caption_logits(case.param, case.theta_hat, y, cent), y_true)
            (loss + decay * (shift.to(DTYPE) ** 2).sum()).backward()
            opt.step()
    return shift.detach()


def rank_one_text_edit(case: RepairCase, layer: int | None = None, ridge: float = 1.0, shrink: float = 1e-2,
                       steps: int = 30, lr: float = 0.05, keys: str = "mean") -> dict:
    """The edited weight of the MLP output projection of ``layer`` (see the module docstring).

    ``keys="mean"``: one key, the mean of the word's keys over the edit captions, target
    ``W k + delta`` (rank-one update); ``keys="each"``: every caption's key with target
    ``W k_i + delta`` (rank-``m`` update, :func:`ecif.core.rank_one.rank_one_edit`). ``ridge``
    and the key second moment ``C`` (:func:`key_second_moment` with ``shrink`` of the keys at
    every token of the ordinary captions) as in docs/math.md §19. Returns ``{"weight"
    (d_out, d_in) float64, "shift", "keys", "layer"}``."""
    if keys not in ("mean", "each"):
        raise ValueError(f"keys must be 'mean' or 'each', got {keys!r}.")
    lin = mlp_output_projection(case.model, layer)
    captions = case.word_captions
    labels = np.full(len(captions), case.word_label, dtype=np.int64)
    K = collect_keys(case.model, case.tokenizer, captions, layer, case.word)
    C = key_second_moment(collect_keys(case.model, case.tokenizer, case.ordinary_captions, layer, None), shrink)
    shift = optimise_shift(case, captions, labels, layer, steps=steps, lr=lr)
    W = lin.weight.detach().to(DTYPE)
    K = K.mean(dim=0, keepdim=True) if keys == "mean" else K
    V = K @ W.T + shift.to(DTYPE)
    return {"weight": rank_one_edit(W, K, V, C, ridge=ridge), "shift": shift, "keys": K,
            "layer": text_layers(case.model) // 2 if layer is None else int(layer)}


# ------------------------------------------------------------------ the data repairs


def add_pairs(objective: ContrastiveObjective, x_new, y_new) -> ContrastiveObjective:
    """``L`` with the pairs ``(x_new, y_new)`` appended (same ``lam``, heads and scaling ``1/n``
    of the enlarged set); the new pairs join the existing batches round-robin (pair ``j`` goes
    to the ``j mod B``-th batch id), so no batch of only new pairs is created."""
    if objective.removed.size:
        raise ValueError("add_pairs expects an objective without removed pairs.")
    x_new = torch.as_tensor(x_new, dtype=DTYPE, device=objective.device)
    y_new = torch.as_tensor(y_new, dtype=DTYPE, device=objective.device)
    ids = objective.batching.batch_ids
    uniq = np.unique(ids)
    new_ids = uniq[np.arange(len(x_new)) % uniq.size]
    return ContrastiveObjective(objective.param, torch.cat([objective._x, x_new]), torch.cat([objective._y, y_new]),
                                BatchingProtocol(np.concatenate([ids, new_ids])), lam=objective.lam)


@dataclass
class Repaired:
    """One repaired model: head parameters ``theta``, the text tower's edited weight (``edit``
    only; ``None``: tower unchanged), the layer edited, the wall ``seconds`` of the repair and
    facts about it (``info``)."""

    name: str
    theta: torch.Tensor
    weight: torch.Tensor | None = None
    layer: int | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def run_repairs(case: RepairCase, *, k: int | None = None, fraction: float = 0.1, layer: int | None = None,
                ridge: float = 1.0, shrink: float = 1e-2, steps: int = 30, lr: float = 0.05, keys: str = "mean",
                gtol: float = 1e-9, preconditioner=None, repairs=REPAIRS) -> list[Repaired]:
    """The repairs ``repairs`` (names of :data:`REPAIRS`) of ``case``, each timed. ``ecif_top_k``
    removes the ``k`` highest-scoring pairs (``None``: ``round(fraction * n)``, as the cleaning
    stage does); refits are warm Newton fits to ``gtol`` (``preconditioner``: the engine's
    solver at ``theta_hat``, as the cleaning stage passes it; it also preconditions the
    ``finetune`` refit, whose enlarged objective has a nearby Hessian)."""
    unknown = [r for r in repairs if r not in REPAIRS]
    if unknown:
        raise ValueError(f"unknown repair(s) {unknown}; choose from {REPAIRS}.")
    n = case.objective.n
    top = (top_fraction(case.scores, fraction) if k is None
           else np.argsort(-np.asarray(case.scores, dtype=np.float64), kind="stable")[:int(k)])
    out = []
    for name in repairs:
        t0 = time.perf_counter()
        if name == "none":
            out.append(Repaired(name, case.theta_hat))
            continue
        if name == "edit":
            e = rank_one_text_edit(case, layer, ridge=ridge, shrink=shrink, steps=steps, lr=lr, keys=keys)
            out.append(Repaired(name, case.theta_hat, e["weight"], e["layer"], time.perf_counter() - t0,
                                {"shift_norm": float(e["shift"].norm()), "n_keys": len(e["keys"])}))
            continue
        if name in ("ecif_top_k", "oracle"):
            idx = top if name == "ecif_top_k" else np.asarray(case.oracle, dtype=np.int64)
            res = retrain(case.objective, case.theta_hat, idx, gtol=gtol, preconditioner=preconditioner)
            info = {"removed": int(len(idx)), "removed_injected": int(np.isin(idx, case.oracle).sum())}
        else:  # finetune
            from ecif.data.features import text_features

            y_fix = case.centre_text(torch.as_tensor(
                text_features(case.model, case.tokenizer, list(case.fix_captions), progress=False),
                dtype=DTYPE, device=case.objective.device))
            res = fit(add_pairs(case.objective, case.fix_x, y_fix), theta_init=case.theta_hat, gtol=gtol,
                      preconditioner=preconditioner)
            info = {"added": int(len(case.fix_x))}
        info.update(converged=bool(res.converged), grad_norm=float(res.grad_norm))
        out.append(Repaired(name, res.theta, seconds=time.perf_counter() - t0, info=info))
    return out


# ------------------------------------------------------------------ evaluation


def _features(case: RepairCase, captions, weight, layer) -> torch.Tensor:
    from ecif.data.features import text_features

    ctx = (edited_weight(mlp_output_projection(case.model, layer), weight) if weight is not None
           else contextlib.nullcontext())
    with ctx:
        y = text_features(case.model, case.tokenizer, list(captions), progress=False)
    return case.centre_text(torch.as_tensor(y, dtype=DTYPE, device=case.objective.device))


@torch.no_grad()
def evaluate(case: RepairCase, repaired: Repaired, reference: Repaired | None = None, sets: dict | None = None) -> dict:
    """The metrics of the module docstring for one repaired model; ``unrelated_drift`` is taken
    against ``reference`` (default: the unrepaired model, ``theta_hat`` and the unedited tower).
    ``sets``: :func:`caption_sets` (computed when ``None``)."""
    sets = caption_sets(case.spec, case.eval_attributes, case.word, case.templates) if sets is None else sets
    param, theta = case.param, repaired.theta
    la = case.spec.label_attribute
    n_classes = len(case.spec.values[la])
    labels = case.labels_eval
    cent = _centroids(param, theta, case.eval_x, labels, n_classes)
    out = {}
    for name, (captions, lab) in sets.items():
        y = _features(case, captions, repaired.weight, repaired.layer)
        pred = _caption_logits(param, theta, y, cent).argmax(dim=1).cpu().numpy()
        out[name] = float((pred == lab).mean()) if len(lab) else float("nan")
        if name == "specificity":
            ref = reference or Repaired("none", case.theta_hat)
            y0 = _features(case, captions, ref.weight, ref.layer)
            v, v0 = param.encode_texts(theta, y), param.encode_texts(ref.theta, y0)
            cos = (v * v0).sum(1) / (v.norm(dim=1) * v0.norm(dim=1))
            out["unrelated_drift"] = float((1 - cos).mean())
    ct = _features(case, case.spec.class_prompts, repaired.weight, repaired.layer)
    out["zero_shot"] = ZeroShotSet(case.eval_x, ct, labels).accuracy(param, theta)
    out["seconds"] = float(repaired.seconds)
    return {m: out[m] for m in METRICS}


def repair_table(case: RepairCase, **kwargs) -> pd.DataFrame:
    """Tidy comparison: one row per (repair, metric) with ``value``, ``before`` (the unrepaired
    model's value) and ``change`` (``value - before``), plus the repair's ``layer`` (edit) and
    ``converged`` (refits). ``kwargs`` go to :func:`run_repairs`."""
    repaired = run_repairs(case, **kwargs)
    sets = caption_sets(case.spec, case.eval_attributes, case.word, case.templates)
    base = evaluate(case, Repaired("none", case.theta_hat), sets=sets)
    rows = []
    for r in repaired:
        vals = base if r.name == "none" else evaluate(case, r, sets=sets)
        for m in METRICS:
            rows.append({"repair": r.name, "metric": m, "value": vals[m], "before": base[m],
                         "change": vals[m] - base[m], "layer": r.layer, "converged": r.info.get("converged")})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof 1; NaN for one seed) of each (repair, metric) ``value`` of a tidy
    table over its rows (e.g. several noise seeds): index ``repair`` in :data:`REPAIRS` order,
    columns ``(metric, "mean" | "std")`` in :data:`METRICS` order."""
    g = table.groupby(["repair", "metric"])["value"].agg(["mean", "std"]).unstack("metric")
    g = g.swaplevel(axis=1)
    order = [r for r in REPAIRS if r in g.index]
    cols = [(m, s) for m in METRICS if m in g.columns.get_level_values(0) for s in ("mean", "std")]
    return g.loc[order, cols]
