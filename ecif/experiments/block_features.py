"""Block features: the frozen prefix of each tower run once, and the suffix the block mode adapts.

For ``finetune.mode: blocks`` the kit adapts the last ``L`` transformer blocks of both towers
(:class:`ecif.core.blocks.BlockLoRA`). This module reads an open_clip model and returns

* :func:`tower_suffix`: the frozen weights after the prefix (``L`` blocks, final LayerNorm,
  pooling, projection) as a :class:`~ecif.core.blocks.TowerSuffix` of plain tensors;
* :func:`image_rows` / :func:`text_rows`: per example the token activations entering the first
  adapted block, its key mask and pooling weights, flattened to one row of ``T (w + 2)`` float32
  numbers (the layout of :mod:`ecif.core.blocks`); text rows are trimmed to the longest caption
  of the data set (positions after it are padding: exact for masked and causal towers).

Supported towers: open_clip ``VisionTransformer`` (class-token or average pooling, no attention
pooler), open_clip ``TextTransformer`` / the text of ``CLIP`` (causal, pooled at the
end-of-text token, first or last position) and Hugging Face BERT-like towers of
``CustomTextCLIP`` (mean or class-token pooling; the default's MiniLM). Anything else (a
ModifiedResNet, a timm trunk, attention pooling) raises ``ValueError`` naming the fix
(``finetune.mode: head``). :func:`check_suffix` compares the suffix run on the rows with the
model's own ``encode_image``/``encode_text`` (float32 tolerance); the extraction calls it.

:func:`extract_block_features` writes the same keys as :func:`ecif.data.features.extract_features`
(``x_{split}``, ``y_{split}``, ``y_train_clean``, ``class_text``, ``labels_{split}``,
``noise_mask``, ``log_logit_scale``) with block rows instead of pooled features, plus the suffix
(:func:`save_suffix`, ``suffix.pt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ecif.core.blocks import Linear, LayerNormSpec, SuffixBlock, TowerSuffix, tower_forward
from ecif.data.pairs import SPLITS, Dataset

__all__ = ["check_suffix", "extract_block_features", "image_rows", "load_suffix", "save_suffix", "text_rows",
           "tower_suffix"]

_HEAD_MODE = "use finetune.mode: head (LoRA on the final projections), which works with every open_clip model"


def _t(p) -> torch.Tensor:
    return p.detach().to(torch.float64).cpu().clone()


def _ln(m: nn.LayerNorm) -> LayerNormSpec:
    return LayerNormSpec(_t(m.weight) if m.weight is not None else torch.ones(m.normalized_shape, dtype=torch.float64, device="cpu"),
                         None if m.bias is None else _t(m.bias), float(m.eps))


def _lin(m: nn.Linear) -> Linear:
    return Linear(_t(m.weight), None if m.bias is None else _t(m.bias))


# --------------------------------------------------------------------------------------------
# which tower is what


def _kind(model, tower: str) -> str:
    if tower == "image":
        vis = model.visual
        if type(vis).__name__ != "VisionTransformer":
            raise ValueError(f"block mode needs a transformer image tower; this model's is {type(vis).__name__}: {_HEAD_MODE}.")
        return "vit"
    text = getattr(model, "text", None)
    if text is not None and type(text).__name__ == "HFTextEncoder":
        return "hf"
    if text is not None and type(text).__name__ == "TextTransformer":
        return "text_transformer"
    if text is None and hasattr(model, "transformer") and hasattr(model, "ln_final"):
        return "clip_text"
    raise ValueError(f"block mode does not know this text tower ({type(text).__name__}): {_HEAD_MODE}.")


def _text_parts(model):
    """(transformer, ln_final, projection, pool_type, eos_id, owner) of an open_clip causal text tower."""
    owner = model.text if getattr(model, "text", None) is not None else model
    if getattr(owner, "cls_emb", None) is not None:
        raise ValueError(f"block mode does not support text towers with an appended class embedding (CoCa): {_HEAD_MODE}.")
    return (owner.transformer, owner.ln_final, owner.text_projection, getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax")),
            getattr(owner, "eos_id", None), owner)


def _blocks_of(model, tower: str) -> list:
    kind = _kind(model, tower)
    if kind == "vit":
        return list(model.visual.transformer.resblocks)
    if kind == "hf":
        enc = model.text.transformer
        if getattr(enc.config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"block mode supports absolute position embeddings only: {_HEAD_MODE}.")
        return list(enc.encoder.layer)
    return list(_text_parts(model)[0].resblocks)


def _open_clip_block(b) -> SuffixBlock:
    name = type(b).__name__
    if name != "ResidualAttentionBlock" or not isinstance(getattr(b, "attn", None), nn.MultiheadAttention):
        raise ValueError(f"block mode does not know the block type {name}: {_HEAD_MODE}.")
    for extra in ("ln_attn", "ln_inner"):
        if not isinstance(getattr(b, extra, nn.Identity()), nn.Identity):
            raise ValueError(f"block mode does not support blocks with {extra} (scale_attn/scale_fc): {_HEAD_MODE}.")
    attn = b.attn
    w = attn.embed_dim
    qkv_w, qkv_b = _t(attn.in_proj_weight), _t(attn.in_proj_bias)
    lin = {m: Linear(qkv_w[i * w : (i + 1) * w].clone(), qkv_b[i * w : (i + 1) * w].clone()) for i, m in enumerate("qkv")}
    lin["o"] = _lin(attn.out_proj)
    lin["fc1"], lin["fc2"] = _lin(b.mlp.c_fc), _lin(b.mlp.c_proj)
    act = b.mlp.gelu
    if type(act).__name__ == "QuickGELU":
        act_name = "quick_gelu"
    elif isinstance(act, nn.GELU) and act.approximate == "none":
        act_name = "gelu"
    else:
        raise ValueError(f"block mode supports exact GELU and QuickGELU MLPs, not {act}: {_HEAD_MODE}.")

    def scale(ls):
        return None if isinstance(ls, nn.Identity) else _t(ls.gamma)

    return SuffixBlock("pre_ln", lin, _ln(b.ln_1), _ln(b.ln_2), int(attn.num_heads), act_name, False,
                       scale(b.ls_1), scale(b.ls_2))


def _bert_block(layer, config) -> SuffixBlock:
    if config.hidden_act != "gelu":
        raise ValueError(f"block mode supports BERT layers with exact GELU, not {config.hidden_act!r}: {_HEAD_MODE}.")
    sa, so = layer.attention.self, layer.attention.output
    lin = {"q": _lin(sa.query), "k": _lin(sa.key), "v": _lin(sa.value), "o": _lin(so.dense),
           "fc1": _lin(layer.intermediate.dense), "fc2": _lin(layer.output.dense)}
    return SuffixBlock("post_ln", lin, _ln(so.LayerNorm), _ln(layer.output.LayerNorm), int(config.num_attention_heads))


def tower_suffix(model, tower: str, n_blocks: int, tokens: int) -> TowerSuffix:
    """The frozen suffix of ``tower`` (``"image"`` or ``"text"``): its last ``n_blocks`` blocks,
    final LayerNorm, pooling order and projection, in float64 on the CPU; ``tokens`` is the
    ``T`` of the rows it will be run on."""
    kind = _kind(model, tower)
    blocks = _blocks_of(model, tower)
    if not 0 <= n_blocks <= len(blocks):
        raise ValueError(f"the {tower} tower has {len(blocks)} blocks; finetune.blocks = {n_blocks} is not in [0, {len(blocks)}].")
    chosen = blocks[len(blocks) - n_blocks :]
    if kind == "vit":
        vis = model.visual
        if vis.attn_pool is not None or vis.pool_type not in ("tok", "avg"):
            raise ValueError(f"block mode supports class-token or average pooling of the ViT: {_HEAD_MODE}.")
        suffix = [_open_clip_block(b) for b in chosen]
        return TowerSuffix(suffix, _ln(vis.ln_post), _projection(vis.proj, tower), tokens,
                           bool(getattr(vis, "final_ln_after_pool", False)))
    if kind == "hf":
        text = model.text
        return TowerSuffix([_bert_block(l, text.config) for l in chosen], None, _projection(text.proj, tower), tokens)
    transformer, ln_final, tp, _, _, _ = _text_parts(model)
    suffix = [_open_clip_block(b) for b in chosen]
    for b in suffix:
        b.causal = True
    return TowerSuffix(suffix, _ln(ln_final), _projection(tp, tower), tokens)


def _projection(p, tower: str) -> Linear:
    """The final projection of ``tower`` as a :class:`Linear` ``(e, w)``: an ``nn.Linear`` as it is,
    an open_clip ``(w, e)`` parameter (used as ``x @ p``) transposed; anything else is refused."""
    if isinstance(p, nn.Linear):
        return _lin(p)
    if isinstance(p, nn.Parameter):
        return Linear(_t(p).T.contiguous())
    raise ValueError(f"block mode needs a linear final projection of the {tower} tower: {_HEAD_MODE}.")


# --------------------------------------------------------------------------------------------
# prefix activations


def _capture(blocks: list, n_blocks: int):
    """A hook handle and a list that receives the hidden states entering block ``len - n_blocks``
    (or leaving the last block when ``n_blocks`` is 0)."""
    got: list = []
    if n_blocks > 0:
        def pre(_m, args, kwargs):
            got.append(args[0] if args else kwargs["hidden_states"])

        return blocks[len(blocks) - n_blocks].register_forward_pre_hook(pre, with_kwargs=True), got

    def post(_m, _args, out):
        got.append(out[0] if isinstance(out, tuple) else out)

    return blocks[-1].register_forward_hook(post), got


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_rows(model, images: np.ndarray, n_blocks: int, batch_size: int = 256) -> np.ndarray:
    """Block rows ``(n, T (w + 2))`` float32 of uint8 images (see the module docstring)."""
    from ecif.data.encoders import image_tensor

    vis = model.visual
    blocks = _blocks_of(model, "image")
    batch_first = getattr(vis.transformer, "batch_first", True)
    out = []
    for i in range(0, len(images), batch_size):
        handle, got = _capture(blocks, n_blocks)
        try:
            model.encode_image(image_tensor(images[i : i + batch_size], getattr(vis, "preprocess_cfg", {})).to(_device(model)))
        finally:
            handle.remove()
        h = got[0] if batch_first else got[0].transpose(0, 1)
        n, t, _ = h.shape
        key = torch.ones(n, t, dtype=h.dtype, device=h.device)
        pool = torch.zeros(n, t, dtype=h.dtype, device=h.device)
        if vis.pool_type == "tok":
            pool[:, 0] = 1.0
        else:
            pool[:, 1:] = 1.0 / (t - 1)
        out.append(torch.cat([h.reshape(n, -1), key, pool], dim=1).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def _text_rows_full(model, tokenizer, texts: list[str], n_blocks: int, batch_size: int = 256):
    """(rows with all context positions, last used position per text) of distinct ``texts``."""
    kind = _kind(model, "text")
    blocks = _blocks_of(model, "text")
    out, last = [], []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size])).to(_device(model))
        handle, got = _capture(blocks, n_blocks)
        try:
            model.encode_text(ids)
        finally:
            handle.remove()
        h = got[0]
        if kind == "hf":
            key = (ids != model.text.config.pad_token_id).to(h.dtype)
            pooler = type(model.text.pooler).__name__
            if pooler == "MeanPooler":
                pool = key / key.sum(dim=1, keepdim=True)
            elif pooler == "ClsPooler":
                pool = torch.zeros_like(key)
                pool[:, model.text.pooler.cls_token_position] = 1.0
            else:
                raise ValueError(f"block mode supports mean or class-token pooling of the text tower, not {pooler}: {_HEAD_MODE}.")
            used = key
        else:
            transformer, _, _, pool_type, eos_id, _ = _text_parts(model)
            if not getattr(transformer, "batch_first", True):
                h = h.transpose(0, 1)
            t = ids.shape[1]
            if pool_type == "argmax":
                pos = ids.argmax(dim=-1)
            elif pool_type == "first":
                pos = torch.zeros(len(ids), dtype=torch.long, device=ids.device)
            elif pool_type == "last":
                pos = torch.full((len(ids),), t - 1, dtype=torch.long, device=ids.device)
            elif pool_type == "eos" and eos_id is not None:
                pos = (ids == eos_id).int().argmax(dim=-1)
            else:
                raise ValueError(f"block mode does not support text pooling {pool_type!r}: {_HEAD_MODE}.")
            pool = torch.nn.functional.one_hot(pos, t).to(h.dtype)
            key = torch.ones_like(pool)
            used = pool
        n, t, _ = h.shape
        idx = torch.arange(t, device=h.device)
        last.append(((used > 0) * idx).amax(dim=1).cpu())
        out.append(torch.cat([h.reshape(n, -1), key, pool], dim=1).float().cpu())
    return torch.cat(out), torch.cat(last)


def _trim(rows: torch.Tensor, t_full: int, width: int, tokens: int) -> np.ndarray:
    n = rows.shape[0]
    h = rows[:, : t_full * width].reshape(n, t_full, width)[:, :tokens]
    key = rows[:, t_full * width : t_full * width + t_full][:, :tokens]
    pool = rows[:, t_full * width + t_full :][:, :tokens]
    return torch.cat([h.reshape(n, -1), key, pool], dim=1).numpy()


def text_rows(model, tokenizer, groups: dict[str, list[str]], n_blocks: int, batch_size: int = 256) -> tuple[dict, int]:
    """Block rows of several lists of texts, all trimmed to the same number of positions ``T``
    (the last position any of them uses, plus one). Returns ``({name: (len(texts), T (w + 2))},
    T)``; each distinct text is encoded once."""
    all_texts = sorted({t for texts in groups.values() for t in texts})
    rows, last = _text_rows_full(model, tokenizer, all_texts, n_blocks, batch_size)
    width = _width(model, "text")
    t_full = (rows.shape[1]) // (width + 2)
    tokens = int(last.max()) + 1
    trimmed = _trim(rows, t_full, width, tokens)
    where = {t: i for i, t in enumerate(all_texts)}
    return {name: trimmed[[where[t] for t in texts]] for name, texts in groups.items()}, tokens


def _width(model, tower: str) -> int:
    b = _blocks_of(model, tower)[-1]
    if hasattr(b, "attn"):
        return int(b.attn.embed_dim)
    return int(b.attention.self.query.in_features)


# --------------------------------------------------------------------------------------------
# checks, extraction, storage


@torch.no_grad()
def check_suffix(model, tokenizer, suffix_img: TowerSuffix, suffix_txt: TowerSuffix, images: np.ndarray,
                 x_rows: np.ndarray, texts: list[str], y_rows: np.ndarray, rtol: float = 1e-3) -> float:
    """Largest relative difference between the frozen suffix run on the rows and the model's own
    ``encode_image``/``encode_text`` (float32); ``RuntimeError`` above ``rtol``."""
    from ecif.data.encoders import image_tensor

    dev = _device(model)
    ref_u = model.encode_image(image_tensor(images, getattr(model.visual, "preprocess_cfg", {})).to(dev)).double().cpu()
    ref_w = model.encode_text(tokenizer(list(texts)).to(dev)).double().cpu()
    u = tower_forward(torch.as_tensor(x_rows, dtype=torch.float64, device="cpu"), suffix_img)
    w = tower_forward(torch.as_tensor(y_rows, dtype=torch.float64, device="cpu"), suffix_txt)
    err = max(float((u - ref_u).norm() / ref_u.norm()), float((w - ref_w).norm() / ref_w.norm()))
    if err > rtol:
        raise RuntimeError(f"the extracted block suffix reproduces the model's embeddings only to relative error {err:.2e} "
                           f"(> {rtol:g}): this architecture is not handled exactly; {_HEAD_MODE}.")
    return err


def extract_block_features(model, tokenizer, dataset: Dataset, n_blocks: int, corruption=None,
                           splits: tuple[str, ...] = SPLITS, batch_size: int = 256) -> dict:
    """Block rows of ``splits`` of ``dataset`` with the last ``n_blocks`` blocks of each tower
    left to adapt, and the suffixes (``feats["suffix"] = (image, text)``). Keys as
    :func:`ecif.data.features.extract_features`; ``meta["blocks"]`` records ``n_blocks`` and ``T``."""
    model.eval()
    feats: dict = {}
    meta = {"dataset": dataset.name, "splits": list(splits), "captions": {}, "class_prompts": dataset.class_prompts,
            "mode": "blocks"}
    groups: dict[str, list[str]] = {}
    for s in splits:
        sp = dataset[s]
        captions = list(sp.captions)
        if s == "train" and corruption is not None:
            if len(corruption.captions) != len(sp):
                raise ValueError(f"corruption has {len(corruption.captions)} captions but the train split has {len(sp)} pairs")
            groups["y_train_clean"] = captions
            feats["noise_mask"] = corruption.mask.astype(bool)
            captions = list(corruption.captions)
            meta["noise"] = {"kind": corruption.kind, "rate": corruption.rate, "seed": corruption.seed}
        groups[f"y_{s}"] = captions
        feats[f"x_{s}"] = image_rows(model, sp.images, n_blocks, batch_size)
        if sp.labels is not None:
            feats[f"labels_{s}"] = sp.labels.astype(np.int64)
        meta["captions"][s] = captions
    if dataset.class_prompts is not None:
        groups["class_text"] = list(dataset.class_prompts)
    rows, t_txt = text_rows(model, tokenizer, groups, n_blocks, batch_size)
    feats.update(rows)
    t_img = feats[f"x_{splits[0]}"].shape[1] // (_width(model, "image") + 2)
    img = tower_suffix(model, "image", n_blocks, t_img)
    txt = tower_suffix(model, "text", n_blocks, t_txt)
    # the suffix on the rows must give the model's own embeddings (a few items of one split)
    s = splits[0]
    key = "y_train_clean" if s == "train" and corruption is not None else f"y_{s}"
    k = min(16, len(dataset[s]))
    err = check_suffix(model, tokenizer, img, txt, dataset[s].images[:k], feats[f"x_{s}"][:k],
                       list(dataset[s].captions[:k]), feats[key][:k])
    feats["log_logit_scale"] = np.asarray(float(model.logit_scale.detach()), dtype=np.float32)
    feats["suffix"] = (img, txt)
    meta["blocks"] = {"n_blocks": int(n_blocks), "tokens_image": int(t_img), "tokens_text": int(t_txt),
                      "suffix_rel_error": err}
    feats["meta"] = meta
    return feats


def save_suffix(path: str | Path, image: TowerSuffix, text: TowerSuffix) -> Path:
    """Write both suffixes to ``path`` (``torch.save`` of plain tensors, numbers and strings)."""

    def lin(l):
        return {"weight": l.weight, "bias": l.bias}

    def ln(n):
        return None if n is None else {"weight": n.weight, "bias": n.bias, "eps": n.eps}

    def tower(t):
        return {"tokens": t.tokens, "ln_after_pool": t.ln_after_pool, "final_ln": ln(t.final_ln), "proj": lin(t.proj),
                "blocks": [{"layout": b.layout, "heads": b.heads, "act": b.act, "causal": b.causal,
                            "ln1": ln(b.ln1), "ln2": ln(b.ln2), "scale1": b.scale1, "scale2": b.scale2,
                            "linears": {k: lin(v) for k, v in b.linears.items()}} for b in t.blocks]}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image": tower(image), "text": tower(text)}, path)
    return path


def load_suffix(path: str | Path) -> tuple[TowerSuffix, TowerSuffix]:
    """The ``(image, text)`` suffixes written by :func:`save_suffix`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no block suffix at {str(path)!r}: extract block features first (finetune.mode: blocks).")
    d = torch.load(path, weights_only=True)

    def lin(x):
        return Linear(x["weight"], x["bias"])

    def ln(x):
        return None if x is None else LayerNormSpec(x["weight"], x["bias"], float(x["eps"]))

    def tower(t):
        blocks = [SuffixBlock(b["layout"], {k: lin(v) for k, v in b["linears"].items()}, ln(b["ln1"]), ln(b["ln2"]),
                              int(b["heads"]), b["act"], bool(b["causal"]), b["scale1"], b["scale2"]) for b in t["blocks"]]
        return TowerSuffix(blocks, ln(t["final_ln"]), lin(t["proj"]), int(t["tokens"]), bool(t["ln_after_pool"]))

    return tower(d["image"]), tower(d["text"])
