"""LoRA inside the last transformer blocks of both towers: the block parametrization.

The frozen prefix of each tower (patch or token embedding and the first blocks) is run once,
when features are extracted (:mod:`ecif.experiments.block_features`); what stays in the loss is the
**suffix**: the last ``L`` transformer blocks, the final LayerNorm, the pooling and the final
projection. :class:`BlockLoRA` puts rank-``r`` LoRA adapters on the weight matrices of those
blocks and on both final projections; a loss evaluation runs only the suffix.

Features of a tower (one row per example, float64 after conversion), shape ``(n, T (w + 2))``:
the ``T x w`` token activations entering the first adapted block, flattened row-major, then the
``T`` key-mask entries (1: a real token that others may attend to, 0: padding) and the ``T``
pooling weights (the pooled vector is ``sum_t p_t h_t``: a one-hot at the class or end-of-text
token, or the key mask divided by its sum for mean pooling). With ``L = 0`` the rows are the
final hidden states and the parametrization reduces exactly to
:class:`~ecif.core.heads.LoRAHeads` on the pooled features (same ``theta`` layout and
``theta0``; tested).

Two block layouts cover the kit's default encoder and open_clip's transformer towers:

* ``"pre_ln"`` (open_clip ``ResidualAttentionBlock``, ViT and text transformer):
  ``h <- h + g1 * Attn(LN1(h))``, ``h <- h + g2 * MLP(LN2(h))`` (``g`` the layer scales);
* ``"post_ln"`` (BERT layers of Hugging Face text towers, e.g. the MiniLM of the default):
  ``h <- LN1(h + Attn(h))``, ``h <- LN2(h + MLP(h))``.

``Attn`` is multi-head scaled dot-product attention with query/key/value/output projections
``q, k, v, o`` (weights ``(w, w)`` with biases); keys with mask 0 and, for causal towers, later
positions get ``-1e30`` added before the softmax. ``MLP(h) = act(h W1^T + b1) W2^T + b2`` with
``act`` the exact GELU or the QuickGELU ``x sigmoid(1.702 x)`` of OpenAI's models.

Adapters: a targeted matrix ``W0 (d_out, d_in)`` becomes ``W0 + B A`` with ``A (r, d_in)``
drawn ``N(0, 1/d_in)`` from the seed and ``B (d_out, r) = 0``, so the model at ``theta0`` is
the frozen one. Targets: ``"attn"`` (``q, k, v, o``) or ``"qv"`` (``q, v`` only, the original
LoRA recipe), and ``"mlp"`` (``fc1, fc2``), in every adapted block of both towers.

``theta`` layout: ``[A_img, B_img, A_txt, B_txt]`` of the projection adapters (as
:class:`~ecif.core.heads.LoRAHeads`), then for the image tower and then the text tower, block by
block, matrix by matrix (``q, k, v, o, fc1, fc2`` among the targets), ``[A, B]``; last the log
logit-scale ``t``. The objective's conventions (fixed batching, ``1/n``, L2 pull to ``theta0``)
are unchanged: only the map ``theta -> embeddings`` is new. Everything is float64.

Texts that occur several times (templated captions) are run through the suffix once per
distinct row (:meth:`BlockLoRA.prepare` finds them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ecif.core.heads import Parametrization
from ecif.core.terms import DTYPE

__all__ = ["ATTN", "MLP", "TARGETS", "BlockLoRA", "BlockPrepared", "LayerNormSpec", "Linear", "SuffixBlock",
           "TowerSuffix", "block_forward", "tower_forward"]

ATTN = ("q", "k", "v", "o")
MLP = ("fc1", "fc2")
#: Target groups and the matrices they adapt: all four attention projections, only query and
#: value (the original LoRA recipe), or the two MLP layers.
TARGETS = {"attn": ATTN, "qv": ("q", "v"), "mlp": MLP}
_MASKED = -1e30  # added to masked attention scores: exp underflows to exactly 0 in float64


@dataclass
class Linear:
    """A frozen affine map ``z W^T + b``: ``weight (d_out, d_in)``, ``bias (d_out,)`` or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class LayerNormSpec:
    """LayerNorm over the last axis with affine ``weight``, ``bias`` (``(w,)``) and ``eps``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        # written out: F.layer_norm's forward-mode rule is not differentiable in reverse mode
        c = h - h.mean(dim=-1, keepdim=True)
        z = c * torch.rsqrt((c * c).mean(dim=-1, keepdim=True) + self.eps) * self.weight
        return z if self.bias is None else z + self.bias


@dataclass
class SuffixBlock:
    """The frozen weights of one transformer block (see the module docstring for the layouts).

    ``linears`` maps ``q, k, v, o, fc1, fc2`` to :class:`Linear`; ``ln1``/``ln2`` the two
    LayerNorms; ``scale1``/``scale2`` the layer scales (``(w,)`` or None); ``heads`` the number
    of attention heads; ``act`` ``"gelu"`` or ``"quick_gelu"``; ``causal`` True for causal
    text transformers."""

    layout: str
    linears: dict[str, Linear]
    ln1: LayerNormSpec
    ln2: LayerNormSpec
    heads: int
    act: str = "gelu"
    causal: bool = False
    scale1: torch.Tensor | None = None
    scale2: torch.Tensor | None = None

    def __post_init__(self):
        if self.layout not in ("pre_ln", "post_ln"):
            raise ValueError(f"unknown block layout {self.layout!r}; use 'pre_ln' or 'post_ln'.")
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"unknown activation {self.act!r}; use 'gelu' or 'quick_gelu'.")
        missing = set(ATTN + MLP) - set(self.linears)
        if missing:
            raise ValueError(f"block weights lack {sorted(missing)}")

    @property
    def width(self) -> int:
        return int(self.linears["q"].weight.shape[1])


@dataclass
class TowerSuffix:
    """What one tower computes after its frozen prefix: ``blocks`` (may be empty), the final
    LayerNorm ``final_ln`` (None for BERT towers), whether it is applied after pooling
    (``ln_after_pool``), and the final projection ``proj`` (``(e, w)`` weight, optional bias).
    ``tokens`` is ``T``, the number of token positions in the features."""

    blocks: list[SuffixBlock]
    final_ln: LayerNormSpec | None
    proj: Linear
    tokens: int
    ln_after_pool: bool = False

    @property
    def width(self) -> int:
        return int(self.proj.weight.shape[1])

    @property
    def feature_dim(self) -> int:
        """Columns of this tower's feature rows: ``T (w + 2)``."""
        return self.tokens * (self.width + 2)

    def to(self, device) -> "TowerSuffix":
        """A float64 copy on ``device``."""

        def mv(t):
            return None if t is None else t.to(device=device, dtype=DTYPE)

        def lin(l):
            return Linear(mv(l.weight), mv(l.bias))

        def ln(n):
            return None if n is None else LayerNormSpec(mv(n.weight), mv(n.bias), n.eps)

        blocks = [SuffixBlock(b.layout, {k: lin(v) for k, v in b.linears.items()}, ln(b.ln1), ln(b.ln2), b.heads,
                              b.act, b.causal, mv(b.scale1), mv(b.scale2)) for b in self.blocks]
        return TowerSuffix(blocks, ln(self.final_ln), lin(self.proj), self.tokens, self.ln_after_pool)


def split_rows(z: torch.Tensor, tokens: int, width: int):
    """Feature rows ``(n, T (w + 2))`` -> hidden ``(n, T, w)``, key mask ``(n, T)``, pooling
    weights ``(n, T)``."""
    n = z.shape[0]
    tw = tokens * width
    return z[:, :tw].reshape(n, tokens, width), z[:, tw : tw + tokens], z[:, tw + tokens :]


def _act(z: torch.Tensor, kind: str) -> torch.Tensor:
    """Exact GELU ``z Phi(z)`` or QuickGELU, from elementary functions (their forward-mode rules
    compose with reverse mode; F.gelu's does not)."""
    if kind == "gelu":
        return 0.5 * z * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    return z * torch.sigmoid(1.702 * z)


def _affine(z: torch.Tensor, lin: Linear, delta) -> torch.Tensor:
    """``z (W + B A)^T + b`` with ``delta = (A, B)`` or None (frozen)."""
    out = z @ lin.weight.T
    if delta is not None:
        a, b = delta
        out = out + (z @ a.T) @ b.T
    return out if lin.bias is None else out + lin.bias


def _softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, written out (torch.softmax's forward-mode rule writes in
    place and breaks reverse mode through it)."""
    e = torch.exp(s - s.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _heads(z: torch.Tensor, nh: int) -> torch.Tensor:
    n, t, w = z.shape
    return z.reshape(n, t, nh, w // nh).transpose(1, 2)


def _delta(z: torch.Tensor, delta) -> torch.Tensor | float:
    """The adapter's contribution ``z A^T B^T`` (0 when the matrix is frozen)."""
    if delta is None:
        return 0.0
    a, b = delta
    return (z @ a.T) @ b.T


@dataclass
class FirstBlockCache:
    """What the first adapted block computes from the frozen prefix alone (it does not depend on
    ``theta``): the attention input ``a`` (``LN1(h)`` for pre-LN blocks, ``h`` for post-LN) and
    its frozen query/key/value products ``a W0^T + b``, each ``(n, T, w)``."""

    a: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


def first_block_cache(h: torch.Tensor, block: SuffixBlock) -> FirstBlockCache:
    """The :class:`FirstBlockCache` of hidden states ``h (n, T, w)`` entering ``block``."""
    a = block.ln1(h) if block.layout == "pre_ln" else h
    return FirstBlockCache(a, *(_affine(a, block.linears[m], None) for m in ("q", "k", "v")))


def block_forward(h: torch.Tensor, block: SuffixBlock, key_bias: torch.Tensor, deltas: dict | None = None,
                  cache: FirstBlockCache | None = None, query: torch.Tensor | None = None) -> torch.Tensor:
    """One block on hidden states ``h (n, T, w)``.

    ``key_bias`` ``(n, 1, T, T)`` or broadcastable: 0 where attention is allowed, ``-1e30`` where
    masked. ``deltas`` maps matrix names to adapter factors ``(A, B)``. ``cache``: the frozen
    products of ``h`` when ``h`` does not depend on ``theta`` (first adapted block).
    ``query`` ``(n,)``: compute the output at this one position per row only (enough when the
    block is the last and the tower pools a single token), shape ``(n, 1, w)``; otherwise
    ``(n, T, w)``.
    """
    deltas = deltas or {}
    n, t, w = h.shape
    nh = block.heads
    if cache is None:
        cache = FirstBlockCache(block.ln1(h) if block.layout == "pre_ln" else h, None, None, None)
    a = cache.a
    q0, k0, v0 = (c if c is not None else _affine(a, block.linears[m], None)
                  for c, m in ((cache.q, "q"), (cache.k, "k"), (cache.v, "v")))
    k = _heads(k0 + _delta(a, deltas.get("k")), nh)
    v = _heads(v0 + _delta(a, deltas.get("v")), nh)
    if query is not None:
        rows = torch.arange(n, device=h.device)
        a_q, q0, h = a[rows, query][:, None], q0[rows, query][:, None], h[rows, query][:, None]
        key_bias = key_bias.expand(n, 1, t, t)[rows, :, query][:, :, None]
    else:
        a_q = a
    q = _heads(q0 + _delta(a_q, deltas.get("q")), nh)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(w // nh) + key_bias
    ctx = (_softmax(scores) @ v).transpose(1, 2).reshape(n, q.shape[2], w)
    att = _affine(ctx, block.linears["o"], deltas.get("o"))
    if block.layout == "pre_ln":
        h = h + (att if block.scale1 is None else att * block.scale1)
        m = _mlp(block.ln2(h), block, deltas)
        return h + (m if block.scale2 is None else m * block.scale2)
    h = block.ln1(h + att)
    return block.ln2(h + _mlp(h, block, deltas))


def _mlp(h, block: SuffixBlock, deltas):
    z = _act(_affine(h, block.linears["fc1"], deltas.get("fc1")), block.act)
    return _affine(z, block.linears["fc2"], deltas.get("fc2"))


def single_token(pool: torch.Tensor) -> torch.Tensor | None:
    """The pooled position per row ``(n,)`` when every row of the pooling weights ``(n, T)`` is
    one-hot (class token, end-of-text token), else None (mean pooling)."""
    top, pos = pool.max(dim=1)
    if bool((top == 1.0).all()) and bool((pool.sum(dim=1) == 1.0).all()):
        return pos
    return None


def key_bias(key_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Additive attention bias ``(n, 1, T, T)``: ``-1e30`` on padded keys and, for causal towers,
    on later positions; 0 elsewhere."""
    bias = (1.0 - key_mask)[:, None, None, :] * _MASKED
    if causal:
        t = key_mask.shape[1]
        later = torch.triu(torch.ones(t, t, dtype=torch.bool, device=key_mask.device), diagonal=1)
        bias = bias + later.to(key_mask.dtype) * _MASKED
    return bias


@dataclass
class TowerInputs:
    """Feature rows of one tower split for the suffix: hidden states ``h (n, T, w)``, attention
    bias, pooling weights ``(n, T)``, the pooled position (or None) and the first block's cache."""

    h: torch.Tensor
    bias: torch.Tensor
    pool: torch.Tensor
    query: torch.Tensor | None
    cache: FirstBlockCache | None


def tower_inputs(z: torch.Tensor, tower: TowerSuffix) -> TowerInputs:
    """Split feature rows ``z (n, T (w + 2))`` and precompute what does not depend on ``theta``."""
    h, key_mask, pool = split_rows(z, tower.tokens, tower.width)
    causal = any(b.causal for b in tower.blocks)
    cache = first_block_cache(h, tower.blocks[0]) if tower.blocks else None
    return TowerInputs(h, key_bias(key_mask, causal), pool, single_token(pool), cache)


def tower_forward(z, tower: TowerSuffix, block_deltas: list[dict] | None = None, proj_delta=None) -> torch.Tensor:
    """Unnormalised embeddings ``(n, e)``: the adapted blocks, the final LayerNorm, pooling and the
    (adapted) projection, on feature rows ``z (n, T (w + 2))`` or their :class:`TowerInputs`.

    When the tower pools one token per row, the last block is evaluated at that token only (its
    other outputs are not used): the same numbers, fewer operations."""
    inp = z if isinstance(z, TowerInputs) else tower_inputs(z, tower)
    h, pool = inp.h, inp.pool
    last = len(tower.blocks) - 1
    for i, block in enumerate(tower.blocks):
        query = inp.query if i == last else None
        h = block_forward(h, block, inp.bias, None if block_deltas is None else block_deltas[i],
                          inp.cache if i == 0 else None, query)
    if tower.blocks and inp.query is not None:
        pooled = h[:, 0]
        if tower.final_ln is not None:
            pooled = tower.final_ln(pooled)
        return _affine(pooled, tower.proj, proj_delta)
    if tower.final_ln is not None and not tower.ln_after_pool:
        h = tower.final_ln(h)
    pooled = (pool[:, :, None] * h).sum(dim=1)
    if tower.final_ln is not None and tower.ln_after_pool:
        pooled = tower.final_ln(pooled)
    return _affine(pooled, tower.proj, proj_delta)


@dataclass
class BlockPrepared:
    """Cached inputs of :meth:`BlockLoRA.embed`: image rows, distinct text rows and the map
    from pairs to them (``text_index (n,)``)."""

    x: torch.Tensor
    y: torch.Tensor
    image: TowerInputs = field(default=None)
    text: TowerInputs = field(default=None)
    text_index: torch.Tensor = field(default=None)


class BlockLoRA(Parametrization):
    """LoRA adapters in the last blocks of both towers and on both final projections.

    Parameters
    ----------
    image, text:
        The :class:`TowerSuffix` of each tower (their blocks are the adapted ones; both
        projections must share the embedding width ``e``).
    log_scale0:
        Starting log logit-scale ``t``.
    rank:
        LoRA rank ``r`` of every adapter.
    targets:
        Which matrices of each block get adapters: a subset of ``("attn", "mlp")``.
    seed:
        Draws every ``A`` (on the CPU, then moved: ``theta0`` is the same on every device).
    device:
        Where the suffix weights and the parameters live (default: the CPU).

    ``n_params = r (d_img + d_txt + 2 e) + sum over adapted matrices of r (d_in + d_out) + 1``,
    with ``d_img``, ``d_txt`` the widths of the pooled features.
    """

    #: Hessian-vector products by double backward: through transformer blocks it is faster than
    #: the structured product (forward mode through the blocks), and both are exact (tested).
    structured_hvp = False

    def __init__(self, image: TowerSuffix, text: TowerSuffix, log_scale0: float, rank: int = 1,
                 targets=("attn", "mlp"), seed: int = 0, device=None):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        targets = tuple(targets)
        unknown = set(targets) - set(TARGETS)
        if unknown or not targets:
            raise ValueError(f"targets must be a non-empty subset of {tuple(TARGETS)}, got {targets}.")
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.image, self.text = image.to(dev), text.to(dev)
        if self.image.proj.weight.shape[0] != self.text.proj.weight.shape[0]:
            raise ValueError(
                f"image and text projections must share the embedding width e, got "
                f"{self.image.proj.weight.shape[0]} and {self.text.proj.weight.shape[0]}."
            )
        self.rank, self.targets = int(rank), targets
        self.width = int(self.image.proj.weight.shape[0])
        if "attn" in targets and "qv" in targets:
            raise ValueError("targets 'attn' and 'qv' overlap ('attn' already adapts q and v); pick one.")
        self.matrices = tuple(m for m in ATTN + MLP if any(m in TARGETS[g] for g in targets))
        self.d_img, self.d_txt = self.image.feature_dim, self.text.feature_dim
        r, e = self.rank, self.width
        # (name, shape) of every slice of theta, in layout order
        shapes = [("head.img.A", (r, self.image.width)), ("head.img.B", (e, r)),
                  ("head.txt.A", (r, self.text.width)), ("head.txt.B", (e, r))]
        for tname, tower in (("img", self.image), ("txt", self.text)):
            for i, block in enumerate(tower.blocks):
                for m in self.matrices:
                    d_out, d_in = block.linears[m].weight.shape
                    shapes += [(f"{tname}.{i}.{m}.A", (r, int(d_in))), (f"{tname}.{i}.{m}.B", (int(d_out), r))]
        sizes = [int(np.prod(s)) for _, s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self._slices = {name: (int(offsets[j]), int(offsets[j + 1]), s) for j, (name, s) in enumerate(shapes)}
        self.n_params = int(offsets[-1]) + 1
        gen = torch.Generator(device="cpu").manual_seed(seed)
        parts = []
        for name, s in shapes:  # the projection A's first, image then text: LoRAHeads' draws
            if name.endswith(".A"):
                parts.append((torch.randn(*s, generator=gen, dtype=DTYPE, device="cpu") / np.sqrt(s[1])).reshape(-1))
            else:
                parts.append(torch.zeros(int(np.prod(s)), dtype=DTYPE, device="cpu"))
        parts.append(torch.tensor([float(log_scale0)], dtype=DTYPE, device="cpu"))
        self.theta0 = torch.cat(parts).to(dev)

    # ------------------------------------------------------------------ layout
    def slice(self, theta: torch.Tensor, name: str) -> torch.Tensor:
        """The named factor (e.g. ``"txt.0.q.A"``, ``"head.img.B"``) as a view of ``theta``."""
        lo, hi, shape = self._slices[name]
        return theta[lo:hi].reshape(shape)

    @property
    def names(self) -> list[str]:
        """Names of the factors in ``theta`` order (the log-scale ``t`` is last, unnamed)."""
        return list(self._slices)

    def group_sizes(self) -> dict[str, int]:
        """Parameter count per group: ``head``, ``img.blocks``, ``txt.blocks``, ``log_scale``."""
        out = {"head": 0, "img.blocks": 0, "txt.blocks": 0, "log_scale": 1}
        for name, (lo, hi, _) in self._slices.items():
            key = "head" if name.startswith("head.") else f"{name.split('.')[0]}.blocks"
            out[key] += hi - lo
        return out

    def _deltas(self, theta, tname: str, tower: TowerSuffix):
        blocks = [{m: (self.slice(theta, f"{tname}.{i}.{m}.A"), self.slice(theta, f"{tname}.{i}.{m}.B"))
                   for m in self.matrices} for i in range(len(tower.blocks))]
        return blocks, (self.slice(theta, f"head.{tname}.A"), self.slice(theta, f"head.{tname}.B"))

    # ------------------------------------------------------------------ the map
    def _check_rows(self, z: torch.Tensor, tower: TowerSuffix, what: str) -> None:
        if z.ndim != 2 or z.shape[1] != tower.feature_dim:
            raise ValueError(
                f"{what} must be block feature rows of shape (n, {tower.feature_dim}) = (n, T (w + 2)) with "
                f"T = {tower.tokens}, w = {tower.width}; got {tuple(z.shape)}. Extract them with "
                "ecif.experiments.block_features (finetune.mode: blocks) for the same encoder and number of blocks."
            )

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> BlockPrepared:
        """Keep the image rows; find the distinct text rows (each is run once per evaluation)."""
        self._check_rows(x, self.image, "image features")
        self._check_rows(y, self.text, "text features")
        y_unique, index = torch.unique(y, dim=0, return_inverse=True)
        return BlockPrepared(x=x, y=y, image=tower_inputs(x, self.image), text=tower_inputs(y_unique, self.text),
                             text_index=index)

    def take(self, data: BlockPrepared, rows) -> BlockPrepared:
        """The prepared pairs ``rows``: their image inputs and text indices; the distinct texts
        stay as they are (each is still run once per evaluation)."""
        img = data.image
        cache = img.cache
        if cache is not None:
            cache = FirstBlockCache(*(getattr(cache, f)[rows] for f in ("a", "q", "k", "v")))
        bias = img.bias if img.bias.shape[0] == 1 else img.bias[rows]
        image = TowerInputs(img.h[rows], bias, img.pool[rows], None if img.query is None else img.query[rows], cache)
        return BlockPrepared(x=data.x[rows], y=data.y[rows], image=image, text=data.text,
                             text_index=data.text_index[rows])

    def encode_images(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``(n, e)`` of block feature rows ``x``."""
        self._check_rows(x, self.image, "image features")
        deltas, proj = self._deltas(theta, "img", self.image)
        return tower_forward(x, self.image, deltas, proj)

    def encode_texts(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings ``(n, e)`` of block feature rows ``y``."""
        self._check_rows(y, self.text, "text features")
        deltas, proj = self._deltas(theta, "txt", self.text)
        return tower_forward(y, self.text, deltas, proj)

    def embed(self, theta: torch.Tensor, data: BlockPrepared):
        img_d, img_p = self._deltas(theta, "img", self.image)
        txt_d, txt_p = self._deltas(theta, "txt", self.text)
        u = tower_forward(data.image, self.image, img_d, img_p)
        w = tower_forward(data.text, self.text, txt_d, txt_p)[data.text_index]
        return u, w

    def image_projection(self, theta):
        raise NotImplementedError("block mode has no single image projection: use encode_images(theta, x)")

    def text_projection(self, theta):
        raise NotImplementedError("block mode has no single text projection: use encode_texts(theta, y)")
