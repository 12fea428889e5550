"""Causal tracing of a dual encoder: which module, at which layer and token, carries a constraint.

The question is where inside one tower the information that decides a retrieval is stored. Take
a query whose constraint (a colour, a shape) decides which of ``K`` candidates is correct, and a
*corrupted* query that differs from it only in that constraint, replaced by another value of the
same slot ("a small red circle ..." -> "a small blue circle ..."; for the image tower, the same
scene drawn in another colour). Run the tower three ways:

* **clean**: the clean query; record the output of every traced module at every token;
* **corrupted**: the corrupted query; the correct candidate loses probability;
* **restored**: the corrupted query, except that one module's output at one token position (or
  the same module kind over a window of consecutive layers, at that token) is overwritten by its
  recorded clean value; everything downstream is recomputed from there.

The response is the retrieval probability of the correct candidate: with ``e`` the normalised
query embedding, ``c_1..c_K`` the normalised candidate embeddings of the *other* tower (fixed,
computed once) and ``s`` the model's logit scale, ``p = softmax_k(s <e, c_k>)[correct]``. The
normalised indirect effect of a restoration is

    NIE = (p_restored - p_corrupt) / (p_clean - p_corrupt),

1 when the restoration brings back all of the clean probability, 0 when it brings back none. It
is averaged over the examples where the corruption flips the retrieval (the clean query ranks the
correct candidate first, the corrupted one does not); elsewhere the denominator is not
meaningful.

Traced module kinds per layer (forward hooks on the model's own modules, removed afterwards):

* ``"attn"``: the attention sub-layer's output before it is added to the residual stream
  (open_clip ``ResidualAttentionBlock.attn``; in a BERT layer the output projection
  ``attention.output.dense``, before its residual LayerNorm);
* ``"mlp"``: the MLP sub-layer's output before the residual (``ResidualAttentionBlock.mlp``;
  the BERT layer's ``output.dense``);
* ``"hidden"``: the whole layer's output, the residual stream leaving the block (restoring it
  at every token of a layer makes everything after it clean: the exactness check).

Towers: open_clip ``VisionTransformer`` (tokens: the class token, then the patches row by row),
open_clip's causal text transformer and the Hugging Face BERT tower of the kit's default encoder
(the MiniLM: 6 layers). For the BERT tower, token ids are cut after the longest caption (later
positions are masked padding, which its pooled output does not read).

All restored runs of a trace are batched: ``C`` restoration conditions of ``n`` examples run as
one batch of ``C n`` corrupted inputs (in chunks of ``rows`` rows) whose hooks overwrite, per row,
the masked token positions with the clean values of that row's example.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ecif.experiments.block_features import _blocks_of, _kind

__all__ = ["KINDS", "Trace", "candidate_embeddings", "changed_patches", "nie", "restored_probabilities",
           "retrieval_probability", "shapes_swap_examples", "SwapExamples", "trace", "trace_image", "trace_text",
           "tower_modules", "text_ids", "window_layers"]

#: Module kinds a trace restores (see the module docstring).
KINDS = ("hidden", "attn", "mlp")


# --------------------------------------------------------------------------------------------
# which modules


def tower_modules(model, tower: str) -> tuple[dict, bool]:
    """The traced modules of ``tower`` (``"text"`` or ``"image"``): ``{(kind, layer): module}``
    for every kind of :data:`KINDS` and layer ``0..L-1``, and whether their outputs are batch
    first (``(n, T, w)``; otherwise ``(T, n, w)``)."""
    kind = _kind(model, tower)
    blocks = _blocks_of(model, tower)
    out = {}
    for i, b in enumerate(blocks):
        if kind == "hf":
            out[("hidden", i)], out[("attn", i)], out[("mlp", i)] = b, b.attention.output.dense, b.output.dense
        else:
            out[("hidden", i)], out[("attn", i)], out[("mlp", i)] = b, b.attn, b.mlp
    if kind == "hf":
        return out, True
    transformer = model.visual.transformer if kind == "vit" else (
        model.text.transformer if getattr(model, "text", None) is not None else model.transformer)
    return out, bool(getattr(transformer, "batch_first", True))


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The ``window`` consecutive layers centred on ``layer`` (the extra one after it for even
    sizes), clipped to ``0..n_layers-1``."""
    lo = layer - (window - 1) // 2
    return [l for l in range(lo, lo + window) if 0 <= l < n_layers]


# --------------------------------------------------------------------------------------------
# the hooked runs


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _encode(model, tower: str, inputs: torch.Tensor) -> torch.Tensor:
    return model.encode_text(inputs) if tower == "text" else model.encode_image(inputs)


@torch.no_grad()
def _clean_outputs(model, tower, inputs, keys, modules, batch_first) -> dict:
    """``{key: (n, T, w)}`` outputs of the keyed modules on ``inputs`` (the clean run)."""
    got: dict = {}
    handles = []

    def make(key):
        def hook(_m, _a, out):
            o = _first(out)
            got[key] = (o if batch_first else o.transpose(0, 1)).detach().clone()
        return hook

    try:
        handles = [modules[k].register_forward_hook(make(k)) for k in keys]
        _encode(model, tower, inputs)
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def _restored_embeddings(model, tower, corrupt, clean_out: dict, masks: dict, modules, batch_first,
                         rows: int) -> torch.Tensor:
    """Embeddings ``(C, n, e)`` of the corrupted inputs with, in condition ``c``, the output of
    module ``key`` at the positions ``masks[key][c]`` (``(C, n, T)`` bool) replaced by its clean
    value."""
    n = corrupt.shape[0]
    n_cond = next(iter(masks.values())).shape[0] if masks else 1
    per = max(1, rows // max(n, 1))
    out = []
    for c0 in range(0, n_cond, per):
        c1 = min(n_cond, c0 + per)
        handles = []

        def make(key, m):
            clean = clean_out[key].repeat(c1 - c0, 1, 1)

            def hook(_mod, _a, output):
                o = _first(output)
                bf = o if batch_first else o.transpose(0, 1)
                new = torch.where(m[:, :, None], clean.to(bf.dtype), bf)
                new = new if batch_first else new.transpose(0, 1)
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            return hook

        try:
            for key, mask in masks.items():
                m = mask[c0:c1].reshape((c1 - c0) * n, -1)
                if bool(m.any()):
                    handles.append(modules[key].register_forward_hook(make(key, m)))
            batch = corrupt.repeat((c1 - c0,) + (1,) * (corrupt.ndim - 1))
            emb = _encode(model, tower, batch)
        finally:
            for h in handles:
                h.remove()
        out.append(emb.reshape(c1 - c0, n, -1))
    return torch.cat(out)


def retrieval_probability(query: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
                          logit_scale: float) -> torch.Tensor:
    """``softmax_k(s <q, c_k>)`` at the correct candidate, all cosines: ``query (..., n, e)``
    (unnormalised), ``candidates (n, K, e)`` (unnormalised), ``target (n,)`` indices into ``K``;
    returns ``(..., n)``."""
    q = torch.nn.functional.normalize(query.double(), dim=-1)
    c = torch.nn.functional.normalize(candidates.double(), dim=-1)
    logits = logit_scale * torch.einsum("...ne,nke->...nk", q, c)
    p = torch.softmax(logits, dim=-1)
    idx = target.to(p.device).reshape((1,) * (p.ndim - 2) + (-1, 1)).expand(p.shape[:-1] + (1,))
    return p.gather(-1, idx)[..., 0]


def _checked_pair(clean: torch.Tensor, corrupt: torch.Tensor, what: str) -> None:
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean and corrupted {what} must have the same shape (same length, aligned token by token), got "
            f"{tuple(clean.shape)} and {tuple(corrupt.shape)}. Fix: replace the constraint by a value of the same slot "
            "that has as many tokens (e.g. 'top left' <-> 'bottom right', not 'top left' <-> 'center')."
        )


def restored_probabilities(model, tower: str, clean: torch.Tensor, corrupt: torch.Tensor, candidates: torch.Tensor,
                           target: torch.Tensor, restorations: list[dict], rows: int = 2048) -> dict:
    """Retrieval probabilities of the correct candidate under arbitrary restorations.

    ``clean``, ``corrupt``: tower inputs of ``n`` examples (token ids ``(n, T)`` or images
    ``(n, 3, S, S)``), the same shape. ``candidates`` ``(n, K, e)``: embeddings of the other
    tower's candidates, ``target`` ``(n,)`` the correct one. ``restorations``: ``C`` conditions,
    each ``{(kind, layer): mask}`` with ``mask`` bool ``(T,)`` (the same positions for every
    example) or ``(n, T)``; an empty dict restores nothing. Returns ``{"clean": (n,),
    "corrupt": (n,), "restored": (C, n)}`` float64 tensors.
    """
    _checked_pair(clean, corrupt, f"{tower} inputs")
    modules, batch_first = tower_modules(model, tower)
    unknown = {k for r in restorations for k in r} - set(modules)
    if unknown:
        raise ValueError(f"unknown (kind, layer) keys {sorted(unknown)}; the {tower} tower has {sorted(modules)}.")
    scale = float(model.logit_scale.detach().exp())
    keys = sorted({k for r in restorations for k in r})
    with torch.no_grad():
        clean_out = _clean_outputs(model, tower, clean, keys, modules, batch_first) if keys else {}
        p_clean = retrieval_probability(_encode(model, tower, clean), candidates, target, scale)
        p_corrupt = retrieval_probability(_encode(model, tower, corrupt), candidates, target, scale)
    n = clean.shape[0]
    masks = {}
    for key in keys:
        t = clean_out[key].shape[1]
        m = torch.zeros(len(restorations), n, t, dtype=torch.bool, device=clean.device)
        for c, r in enumerate(restorations):
            if key in r:
                mk = torch.as_tensor(r[key], dtype=torch.bool, device=clean.device)
                if mk.shape[-1] != t:
                    raise ValueError(f"restoration mask of {key} has {mk.shape[-1]} positions; the tower has {t} tokens.")
                m[c] = mk
        masks[key] = m
    emb = _restored_embeddings(model, tower, corrupt, clean_out, masks, modules, batch_first, rows)
    return {"clean": p_clean, "corrupt": p_corrupt,
            "restored": retrieval_probability(emb, candidates, target, scale)}


def nie(p_restored, p_clean, p_corrupt):
    """Normalised indirect effect ``(p_restored - p_corrupt) / (p_clean - p_corrupt)`` per
    example (broadcast over leading axes of ``p_restored``)."""
    return (p_restored - p_corrupt) / (p_clean - p_corrupt)


# --------------------------------------------------------------------------------------------
# the grid: every kind, layer and token


@dataclass
class Trace:
    """A traced tower on ``n`` examples.

    ``p_clean``, ``p_corrupt`` ``(n,)``; ``restored`` ``(n, len(kinds), L, T)`` the probability
    with one module restored at one token; ``restored_window`` the same with the module kind
    restored over :func:`window_layers` (``None`` when ``window`` is 1; ``"hidden"`` rows are the
    single-layer ones, windows apply to ``attn``/``mlp``). ``roles`` ``(n, T)`` names each
    token's role (text: ``first``, ``before``, ``constraint``, ``next``, ``after``, ``last``,
    ``pad``; image: ``cls``, ``corrupted``, ``clean``), ``corrupted`` ``(n, T)`` the tokens the
    corruption changed."""

    tower: str
    kinds: tuple
    window: int
    p_clean: np.ndarray
    p_corrupt: np.ndarray
    restored: np.ndarray
    restored_window: np.ndarray | None
    roles: np.ndarray
    corrupted: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def flipped(self) -> np.ndarray:
        """Examples whose retrieval the corruption flips (see the module docstring); set by
        :func:`trace` from the ranks of the correct candidate."""
        return self.info["flipped"]

    def nie(self, window: bool = False) -> np.ndarray:
        """Per-example NIE ``(n, kinds, L, T)`` of the single-layer (or window) restorations."""
        r = self.restored_window if window else self.restored
        return nie(r, self.p_clean[:, None, None, None], self.p_corrupt[:, None, None, None])

    def heatmap(self, kind: str, window: bool = False) -> np.ndarray:
        """Mean NIE over the flipped examples, ``(L, T)`` (layer x token position); NaN where no
        flipped example has a real token."""
        v = self.nie(window)[:, self.kinds.index(kind)][self.flipped]
        pad = (self.roles[self.flipped] == "pad")[:, None, :]
        v = np.where(pad, np.nan, v)
        with np.errstate(invalid="ignore"):
            return np.nanmean(v, axis=0) if len(v) else np.full(v.shape[1:], np.nan)


def _grid(kinds, n_layers: int, n_tokens: int, window: int) -> tuple[list, list]:
    """Restoration conditions of the grid and their (kind, layer, token, windowed) labels."""
    conds, labels = [], []
    for kind in kinds:
        for layer in range(n_layers):
            for t in range(n_tokens):
                onehot = np.zeros(n_tokens, dtype=bool)
                onehot[t] = True
                conds.append({(kind, layer): onehot})
                labels.append((kind, layer, t, False))
                if window > 1 and kind != "hidden":
                    conds.append({(kind, l): onehot for l in window_layers(layer, window, n_layers)})
                    labels.append((kind, layer, t, True))
    return conds, labels


def trace(model, tower: str, clean: torch.Tensor, corrupt: torch.Tensor, candidates: torch.Tensor,
          target: torch.Tensor, roles: np.ndarray, corrupted: np.ndarray, kinds=("attn", "mlp"), window: int = 3,
          only_flipped: bool = True, rows: int = 2048) -> Trace:
    """Restore every kind of ``kinds`` at every layer and token (and over windows of ``window``
    layers), see :func:`restored_probabilities` for the inputs. ``only_flipped``: run the
    restorations on the flipped examples only (the others do not enter the NIE; their
    ``restored`` entries are NaN)."""
    bad = set(kinds) - set(KINDS)
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}.")
    if window < 1:
        raise ValueError(f"window must be >= 1 layer, got {window}.")
    _checked_pair(clean, corrupt, f"{tower} inputs")
    modules, _ = tower_modules(model, tower)
    n_layers = 1 + max(l for _, l in modules)
    n = clean.shape[0]
    n_tokens = roles.shape[1]
    base = restored_probabilities(model, tower, clean, corrupt, candidates, target, [{}], rows)
    scale = float(model.logit_scale.detach().exp())
    with torch.no_grad():
        q_clean = torch.nn.functional.normalize(_encode(model, tower, clean).double(), dim=-1)
        q_bad = torch.nn.functional.normalize(_encode(model, tower, corrupt).double(), dim=-1)
        c = torch.nn.functional.normalize(candidates.double(), dim=-1)
        top_clean = (scale * torch.einsum("ne,nke->nk", q_clean, c)).argmax(-1).cpu()
        top_bad = (scale * torch.einsum("ne,nke->nk", q_bad, c)).argmax(-1).cpu()
    tgt = target.cpu()
    flipped = ((top_clean == tgt) & (top_bad != tgt)).numpy()
    keep = np.flatnonzero(flipped) if only_flipped else np.arange(n)
    conds, labels = _grid(tuple(kinds), n_layers, n_tokens, window)
    restored = np.full((n, len(kinds), n_layers, n_tokens), np.nan)
    restored_w = np.full_like(restored, np.nan) if window > 1 else None
    if len(keep):
        sel = torch.as_tensor(keep, device=clean.device)
        res = restored_probabilities(model, tower, clean[sel], corrupt[sel], candidates[sel], target[sel], conds, rows)
        r = res["restored"].cpu().numpy()
        for j, (kind, layer, t, windowed) in enumerate(labels):
            (restored_w if windowed else restored)[keep, kinds.index(kind), layer, t] = r[j]
        if restored_w is not None and "hidden" in kinds:
            restored_w[:, kinds.index("hidden")] = restored[:, kinds.index("hidden")]
    return Trace(tower, tuple(kinds), int(window), base["clean"].cpu().numpy(), base["corrupt"].cpu().numpy(),
                 restored, restored_w, roles, corrupted, {"flipped": flipped, "n_layers": n_layers})


# --------------------------------------------------------------------------------------------
# inputs: captions, images, candidates


def text_ids(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids ``(n, T)`` of ``texts`` on the model's device. For a Hugging Face tower (mean or
    class-token pooling under a padding mask) they are cut after the last non-padding position of
    any text, which changes no output; open_clip's own text transformer needs its full context."""
    ids = tokenizer(list(texts)).to(_device(model))
    if _kind(model, "text") != "hf":
        return ids
    used = (ids != model.text.config.pad_token_id).any(dim=0).nonzero()
    return ids[:, : int(used.max()) + 1] if len(used) else ids


def _text_roles(clean: torch.Tensor, corrupt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Roles ``(n, T)`` of the text tokens and the changed positions ``(n, T)``; ``ValueError``
    when a pair has no changed token."""
    c, k = clean.cpu().numpy(), corrupt.cpu().numpy()
    changed = c != k
    if not changed.any(axis=1).all():
        bad = int(np.flatnonzero(~changed.any(axis=1))[0])
        raise ValueError(f"example {bad}: the corrupted caption has the same tokens as the clean one; corrupt a slot "
                         "with another value.")
    n, t = c.shape
    pos = np.broadcast_to(np.arange(t)[None, :], (n, t))
    real = c != 0
    last = (real * pos).max(axis=1)[:, None]
    lo = np.where(changed, pos, t).min(axis=1)[:, None]
    hi = np.where(changed, pos, -1).max(axis=1)[:, None]
    roles = np.full((n, t), "after", dtype=object)
    roles[pos < lo] = "before"
    roles[(pos >= lo) & (pos <= hi)] = "constraint"
    roles[pos == hi + 1] = "next"
    roles[pos == 0] = "first"
    roles[pos == last] = "last"
    roles[~real] = "pad"
    return roles, changed


def changed_patches(model, clean: torch.Tensor, corrupt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Image tokens the corruption changed ``(n, T)`` (a patch with any differing pixel; the
    class token is never changed) and their roles ``(n, T)`` (``cls``, ``corrupted``, ``clean``),
    for open_clip ViT inputs ``(n, 3, S, S)``."""
    vis = model.visual
    ph, pw = vis.conv1.kernel_size
    n, _, h, w = clean.shape
    d = (clean != corrupt).any(dim=1).reshape(n, h // ph, ph, w // pw, pw).any(dim=4).any(dim=2)
    patches = d.reshape(n, -1).cpu().numpy()
    n_prefix = 0 if getattr(vis, "class_embedding", None) is None else 1
    changed = np.concatenate([np.zeros((n, n_prefix), dtype=bool), patches], axis=1)
    roles = np.where(changed, "corrupted", "clean").astype(object)
    roles[:, :n_prefix] = "cls"
    return roles, changed


@torch.no_grad()
def candidate_embeddings(model, tower: str, inputs: torch.Tensor, n: int, k: int, batch: int = 512) -> torch.Tensor:
    """Embeddings ``(n, K, e)`` of candidates given as ``n K`` stacked inputs (example-major)."""
    out = [_encode(model, tower, inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    return torch.cat(out).reshape(n, k, -1)


@dataclass
class SwapExamples:
    """Examples of a same-slot corruption of the ``shapes`` data (:func:`shapes_swap_examples`).

    ``clean_captions`` / ``corrupt_captions`` (n); ``images`` ``(n, K, S, S, 3)`` uint8: every
    value of the slot drawn with the example's other attributes and the same jitter and
    background; ``captions`` ``(n, K)`` the matching captions; ``target`` ``(n,)`` the clean
    value, ``wrong`` ``(n,)`` the value the corruption puts in; ``attributes`` the examples'
    codes."""

    attribute: str
    values: list
    clean_captions: list
    corrupt_captions: list
    images: np.ndarray
    captions: list
    target: np.ndarray
    wrong: np.ndarray
    attributes: dict


def shapes_swap_examples(split, attribute: str, n: int, seed: int = 0, swap: dict | None = None,
                         image_size: int | None = None) -> SwapExamples:
    """Same-slot corruptions of the first ``n`` pairs of a ``shapes`` split.

    The corruption puts value ``swap[v]`` in place of ``v`` (names of the slot's values; default
    the next value, cyclically); examples whose value ``swap`` does not map are skipped.
    Candidates: all values of the slot, drawn by :func:`ecif.data.embedded.render_shapes` with
    ``seed`` (one draw per value with identical jitter and noise, so candidates differ only in
    the slot)."""
    from ecif.data.embedded import SHAPE_VALUES, SHAPES_SPEC, render_shapes

    if attribute not in SHAPE_VALUES:
        raise ValueError(f"attribute {attribute!r} is not a shapes slot; use one of {sorted(SHAPE_VALUES)}.")
    values = SHAPE_VALUES[attribute]
    if swap is not None:
        bad = [v for kv in swap.items() for v in kv if v not in values]
        if bad:
            raise ValueError(f"swap names {bad}, not values of {attribute!r} ({values}).")
    mapping = np.array([values.index(swap[v]) if swap and v in swap else (-1 if swap else (i + 1) % len(values))
                        for i, v in enumerate(values)])
    codes = {a: np.asarray(split.attributes[a]) for a in SHAPE_VALUES}
    rows = np.flatnonzero(mapping[codes[attribute]] >= 0)[:n]
    if len(rows) == 0:
        raise ValueError(f"no pair of the split has a value of {attribute!r} that the swap {swap} maps.")
    attrs = {a: c[rows] for a, c in codes.items()}
    size = image_size or int(split.images.shape[1])
    k = len(values)
    images, captions = [], []
    for v in range(k):
        a = {**attrs, attribute: np.full(len(rows), v, dtype=np.int64)}
        images.append(render_shapes(a, seed, size))
        captions.append(SHAPES_SPEC.render({**a, "template": np.zeros(len(rows), dtype=np.int64)}))
    target = attrs[attribute]
    wrong = mapping[target]
    clean = SHAPES_SPEC.render({**attrs, "template": np.zeros(len(rows), dtype=np.int64)})
    bad = SHAPES_SPEC.render({**attrs, attribute: wrong, "template": np.zeros(len(rows), dtype=np.int64)})
    return SwapExamples(attribute, list(values), clean, bad, np.stack(images, axis=1),
                        [[captions[v][i] for v in range(k)] for i in range(len(rows))], target, wrong, attrs)


def _device(model):
    return next(model.parameters()).device


def trace_text(model, tokenizer, ex: SwapExamples, kinds=("attn", "mlp"), window: int = 3, rows: int = 2048) -> Trace:
    """Trace the text tower: clean vs corrupted captions of ``ex``, candidates its ``K`` images
    (encoded by the same model); ``ValueError`` when a corrupted caption does not tokenize to the
    same length as its clean one."""
    from ecif.data.encoders import image_tensor

    dev = _device(model)
    both = text_ids(model, tokenizer, list(ex.clean_captions) + list(ex.corrupt_captions))
    n = len(ex.clean_captions)
    clean, corrupt = both[:n], both[n:]
    lens = ((clean != 0).sum(1), (corrupt != 0).sum(1))
    if not bool((lens[0] == lens[1]).all()):
        i = int((lens[0] != lens[1]).nonzero()[0, 0])
        raise ValueError(f"caption {ex.clean_captions[i]!r} has {int(lens[0][i])} tokens but its corruption "
                         f"{ex.corrupt_captions[i]!r} has {int(lens[1][i])}: the tokens would not be aligned. Fix: swap "
                         "to a value with the same number of tokens.")
    roles, changed = _text_roles(clean, corrupt)
    k = ex.images.shape[1]
    px = image_tensor(ex.images.reshape((-1,) + ex.images.shape[2:]), getattr(model.visual, "preprocess_cfg", {})).to(dev)
    cand = candidate_embeddings(model, "image", px, n, k)
    target = torch.as_tensor(ex.target, device=dev)
    return trace(model, "text", clean, corrupt, cand, target, roles, changed, kinds, window, rows=rows)


def trace_image(model, tokenizer, ex: SwapExamples, kinds=("attn", "mlp"), window: int = 3, rows: int = 2048) -> Trace:
    """Trace the image tower: the scene with the clean value vs the same scene with the
    corrupted value (the changed patches are the corrupted tokens), candidates the ``K``
    captions of ``ex`` (encoded by the same model)."""
    from ecif.data.encoders import image_tensor

    dev = _device(model)
    n, k = ex.images.shape[:2]
    rows_n = np.arange(n)
    cfg = getattr(model.visual, "preprocess_cfg", {})
    clean = image_tensor(ex.images[rows_n, ex.target], cfg).to(dev)
    corrupt = image_tensor(ex.images[rows_n, ex.wrong], cfg).to(dev)
    roles, changed = changed_patches(model, clean, corrupt)
    ids = text_ids(model, tokenizer, [c for cs in ex.captions for c in cs])
    cand = candidate_embeddings(model, "text", ids, n, k)
    target = torch.as_tensor(ex.target, device=dev)
    return trace(model, "image", clean, corrupt, cand, target, roles, changed, kinds, window, rows=rows)
