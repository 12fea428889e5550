"""A block-mode fit as an ordinary open_clip model: the LoRA deltas merged into the weights.

:class:`~ecif.core.blocks.BlockLoRA` runs the adapted suffix on cached prefix activations; to
look inside the fitted encoder with tools that need the whole model (causal tracing,
:mod:`ecif.experiments.tracing`) the adapters are folded back: every adapted matrix ``W0`` of the
last ``L`` blocks becomes ``W0 + B A``, each final projection ``P0`` becomes ``P0 + B A`` (for
an open_clip projection parameter, used as ``x @ P``, the transpose is added) and the logit
scale is set to ``exp(t)`` (open_clip stores its log, as ``theta`` does). The merged model's
``encode_image``/``encode_text`` then equal ``BlockLoRA.encode_images``/``encode_texts`` on the
block rows of the same inputs (tested). Block mode has no feature centring (``build_problem``
refuses ``centre=True`` with blocks), so nothing else has to be applied.
"""

from __future__ import annotations

import copy

import torch

from ecif.core.blocks import BlockLoRA
from ecif.experiments.block_features import _blocks_of, _kind, _text_parts

__all__ = ["merge_block_lora"]


def _add(p: torch.nn.Parameter, delta: torch.Tensor, rows: slice | None = None) -> None:
    """``p (+)= delta`` in float64, stored back in ``p``'s dtype (``rows``: a row slice of ``p``)."""
    with torch.no_grad():
        target = p if rows is None else p[rows]
        target.copy_((target.double() + delta.to(device=p.device, dtype=torch.float64)).to(p.dtype))


def _block_params(block, kind: str, matrix: str) -> tuple[torch.nn.Parameter, slice | None]:
    """The weight holding ``matrix`` (``q, k, v, o, fc1, fc2``) of one block, and its row slice."""
    if kind == "hf":
        sa = block.attention.self
        return {"q": (sa.query.weight, None), "k": (sa.key.weight, None), "v": (sa.value.weight, None),
                "o": (block.attention.output.dense.weight, None), "fc1": (block.intermediate.dense.weight, None),
                "fc2": (block.output.dense.weight, None)}[matrix]
    attn = block.attn
    w = attn.embed_dim
    if matrix in ("q", "k", "v"):
        i = "qkv".index(matrix)
        return attn.in_proj_weight, slice(i * w, (i + 1) * w)
    return {"o": attn.out_proj.weight, "fc1": block.mlp.c_fc.weight, "fc2": block.mlp.c_proj.weight}[matrix], None


def _projection_owner(model, tower: str, kind: str):
    if tower == "image":
        return model.visual, "proj"
    if kind == "hf":
        return model.text, "proj"
    return _text_parts(model)[5], "text_projection"


def merge_block_lora(model, param: BlockLoRA, theta: torch.Tensor):
    """A deep copy of the open_clip ``model`` with ``theta``'s block adapters, projection adapters
    and log logit-scale merged in (see the module docstring); ``model`` is not changed.

    ``param`` must have been built on this model's suffix (the same number of blocks per tower,
    same widths): ``ValueError`` otherwise, and when the projections differ from the suffix's
    frozen ones (another model)."""
    theta = theta.detach()
    if theta.shape != (param.n_params,):
        raise ValueError(f"theta has shape {tuple(theta.shape)}; this BlockLoRA has {param.n_params} parameters.")
    merged = copy.deepcopy(model)
    for tname, tower, suffix in (("img", "image", param.image), ("txt", "text", param.text)):
        kind = _kind(merged, tower)
        blocks = _blocks_of(merged, tower)
        n_blocks = len(suffix.blocks)
        if n_blocks > len(blocks):
            raise ValueError(f"the BlockLoRA adapts {n_blocks} {tower} blocks but the model has {len(blocks)}: "
                             "merge into the model the block features were extracted from.")
        owner, name = _projection_owner(merged, tower, kind)
        proj = getattr(owner, name)
        is_linear = isinstance(proj, torch.nn.Linear)
        w0 = (proj.weight if is_linear else proj.T).detach().double().cpu()
        if w0.shape != suffix.proj.weight.shape or not torch.allclose(w0, suffix.proj.weight.cpu(), rtol=1e-6, atol=1e-7):
            raise ValueError(f"the {tower} projection of this model is not the one the BlockLoRA was built on: merge into "
                             "the model the block features were extracted from.")
        for i, block in enumerate(blocks[len(blocks) - n_blocks :]):
            for m in param.matrices:
                a, b = param.slice(theta, f"{tname}.{i}.{m}.A"), param.slice(theta, f"{tname}.{i}.{m}.B")
                p, rows = _block_params(block, kind, m)
                _add(p, b @ a, rows)
        delta = param.slice(theta, f"head.{tname}.B") @ param.slice(theta, f"head.{tname}.A")  # (e, w)
        _add(proj.weight if is_linear else proj, delta if is_linear else delta.T)
    with torch.no_grad():
        merged.logit_scale.fill_(float(theta[-1]))
    return merged.eval()
