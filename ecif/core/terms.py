"""The contrastive terms of ECIF as pure functions of the batch similarities (docs/math.md).

Inputs are the similarities of all batches at once, ``S`` of shape ``(M, b_max, b_max)``
(``S[m, i, j] = s <u_a, v_b>`` for the pairs ``a``, ``b`` in slots ``i``, ``j`` of batch ``m``;
rows are images, columns texts; docs/math.md §1-§2), and :class:`Masks` telling which slots hold
a kept pair. Padding slots and removed pairs are masked: they enter no softmax, and every
per-slot output is 0 on them. ``S`` and ``Sdot`` must be finite everywhere, masked entries
included. Nothing here knows about parameters or embeddings; only :func:`hvp_cotangents`
involves the objective's ``1/n``.

Per-slot terms of pair ``k`` (docs/math.md §4), ``P`` / ``Q`` the row / column softmax of ``S``:

* ``Pos_k = [-S_kk + lse_b S_kb] + [-S_kk + lse_a S_ak]``
* ``Neg_k = sum_{a != k} P_ak + sum_{b != k} Q_kb``
* ``NegExact_k = -sum_{a != k} log(1 - P_ak) - sum_{b != k} log(1 - Q_kb)``

Sign convention (docs/math.md §5-§6): a variant names a gradient term ``T_k`` (a sum of the
terms above, :data:`VARIANT_TERMS`) and predicts the shift of removing ``k`` as
``Delta theta(k) = (1/n) H^-1 grad T_k(theta_hat) ~ theta_hat_{-k} - theta_hat`` (a plus sign:
removal is the weight ``-1`` on ``T_k``). The influence score ``IS(k) = grad L_val^T Delta
theta(k)`` estimates ``L_val(theta_hat_{-k}) - L_val(theta_hat)``: ``IS < 0`` means ``k`` is
harmful, and "most harmful first" is ascending ``IS``. For ``newton`` the gradient term of a set
``R`` is the exact removal gradient ``grad L - grad L_{-R}`` at ``theta_hat``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "DTYPE", "TERMS", "VARIANTS", "device_of", "VARIANT_TERMS", "Masks", "masks", "softmaxes", "pos", "neg",
    "negexact", "slot_terms", "directional_terms", "hvp_cotangents",
]

#: Floating-point type of every parameter, feature and derivative in the kit.
DTYPE = torch.float64


def device_of(a) -> torch.device:
    """Where a computation on ``a`` runs: the device of a tensor, the CPU for anything else
    (numpy arrays, lists, scalars). Core creates every tensor on the device of the problem's
    data, so a problem moved to ``cuda`` computes there (in float64) and one on the CPU is
    unchanged."""
    return a.device if isinstance(a, torch.Tensor) else torch.device("cpu")

#: Names of the per-pair terms (docs/math.md §4).
TERMS = ("pos", "neg", "negexact")

#: The influence variants, in the order the kit reports them (docs/math.md §5).
VARIANTS = ("positive", "negative", "ecif", "newton")

#: Which per-pair terms make up each variant's gradient term ``T_k``.
VARIANT_TERMS = {
    "positive": ("pos",),
    "negative": ("neg",),
    "ecif": ("pos", "neg"),
    "newton": ("pos", "negexact"),
}

# Masked similarities: a large finite negative value, not -inf (which would poison gradients
# with NaN); its exponential underflows to exactly 0.
_MASKED = -1e30


class Masks(NamedTuple):
    """Which parts of a padded ``(M, b_max, b_max)`` batch tensor are real (see :func:`masks`)."""

    keep: torch.Tensor  #: ``(M, b_max)`` bool: the slot holds a pair that is not removed
    pairs: torch.Tensor  #: ``(M, b_max, b_max)`` bool: row and column slots both kept
    offdiag: torch.Tensor  #: ``(M, b_max, b_max)`` bool: :attr:`pairs` without the diagonal

    def select(self, batches: slice) -> "Masks":
        """The masks of the batches ``batches`` (a slice along ``M``)."""
        return Masks(self.keep[batches], self.pairs[batches], self.offdiag[batches])


def masks(keep: torch.Tensor) -> Masks:
    """:class:`Masks` from the per-slot keep mask ``keep (M, b_max)``."""
    pairs = keep[:, :, None] & keep[:, None, :]
    eye = torch.eye(keep.shape[1], dtype=torch.bool, device=keep.device)
    return Masks(keep, pairs, pairs & ~eye)


def _masked(S: torch.Tensor, m: Masks) -> torch.Tensor:
    return torch.where(m.pairs, S, torch.full_like(S, _MASKED))


def softmaxes(S: torch.Tensor, m: Masks) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax ``P`` (over texts ``b`` for each image ``a``) and column softmax ``Q`` (over
    images ``a`` for each text ``b``) of ``S`` over kept entries; both ``(M, b_max, b_max)``, 0 on
    masked entries."""
    Sm = _masked(S, m)
    P = torch.softmax(Sm, dim=2) * m.pairs
    Q = torch.softmax(Sm, dim=1) * m.pairs
    return P, Q


def pos(S: torch.Tensor, m: Masks) -> torch.Tensor:
    """``Pos_k`` per slot ``(M, b_max)``: the pair's own row and column InfoNCE terms."""
    Sm = _masked(S, m)
    diag = torch.diagonal(S, dim1=1, dim2=2)
    out = -2.0 * diag + torch.logsumexp(Sm, dim=2) + torch.logsumexp(Sm, dim=1)
    return torch.where(m.keep, out, torch.zeros_like(out))


def neg(P: torch.Tensor, Q: torch.Tensor, m: Masks) -> torch.Tensor:
    """``Neg_k`` per slot ``(M, b_max)``: softmax mass that the other rows (column ``k`` of ``P``)
    and the other columns (row ``k`` of ``Q``) put on ``k`` as a negative."""
    off = m.offdiag
    return (P * off).sum(dim=1) + (Q * off).sum(dim=2)


def negexact(P: torch.Tensor, Q: torch.Tensor, m: Masks) -> torch.Tensor:
    """``NegExact_k`` per slot ``(M, b_max)``: ``-sum log(1 - p)`` over the same entries as
    :func:`neg`; the change of the other pairs' terms when ``k`` is deleted."""
    off = m.offdiag
    return -(torch.log1p(-P * off) * off).sum(dim=1) - (torch.log1p(-Q * off) * off).sum(dim=2)


def slot_terms(S: torch.Tensor, m: Masks) -> dict[str, torch.Tensor]:
    """``Pos``, ``Neg``, ``NegExact`` per slot, ``(M, b_max)`` each, keyed as in :data:`TERMS`."""
    P, Q = softmaxes(S, m)
    return {"pos": pos(S, m), "neg": neg(P, Q, m), "negexact": negexact(P, Q, m)}


def directional_terms(S: torch.Tensor, Sdot: torch.Tensor, m: Masks) -> dict[str, torch.Tensor]:
    """Derivatives of the per-slot terms along a direction (docs/math.md §7).

    ``Sdot (M, b_max, b_max)`` is the derivative of ``S`` along the direction. With
    ``r_a = sum_b P_ab Sdot_ab`` and ``c_b = sum_a Q_ab Sdot_ab`` (returned as ``"r"``, ``"c"``):

    * ``dPos_k = -2 Sdot_kk + r_k + c_k``
    * ``dNeg_k = sum_{a != k} P_ak (Sdot_ak - r_a) + sum_{b != k} Q_kb (Sdot_kb - c_b)``
    * ``dNegExact_k``: the same sums, each summand divided by ``1 - P_ak`` (resp. ``1 - Q_kb``).

    Returns a dict of ``(M, b_max)`` tensors keyed ``"r"``, ``"c"``, ``"pos"``, ``"neg"``,
    ``"negexact"``, all 0 on masked slots.
    """
    P, Q = softmaxes(S, m)
    off = m.offdiag
    r = (P * Sdot).sum(dim=2)  # r_a, a = row
    c = (Q * Sdot).sum(dim=1)  # c_b, b = column
    dpos = -2.0 * torch.diagonal(Sdot, dim1=1, dim2=2) + r + c
    pn = P * (Sdot - r[:, :, None]) * off  # P_ak (Sdot_ak - r_a)
    qn = Q * (Sdot - c[:, None, :]) * off  # Q_kb (Sdot_kb - c_b)
    dneg = pn.sum(dim=1) + qn.sum(dim=2)
    dnegexact = (pn / (1.0 - P * off)).sum(dim=1) + (qn / (1.0 - Q * off)).sum(dim=2)
    dpos = torch.where(m.keep, dpos, torch.zeros_like(dpos))
    return {"r": r, "c": c, "pos": dpos, "neg": dneg, "negexact": dnegexact}


def hvp_cotangents(S: torch.Tensor, Sdot: torch.Tensor, m: Masks,
                   n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``G`` and ``Gdot`` of the Hessian-vector product, ``(M, b_max, b_max)`` each (docs/math.md §8).

    For the data term ``l(S) = (1/n) sum_k Pos_k``: ``G = dl/dS = (P + Q - 2 I) / n`` on kept
    entries (0 elsewhere) and ``Gdot`` its derivative along ``Sdot``,
    ``Gdot = (1/n) [P o (Sdot - r) + Q o (Sdot - c)]`` with ``r``, ``c`` as in
    :func:`directional_terms` (broadcast along rows and columns).
    """
    P, Q = softmaxes(S, m)
    r = (P * Sdot).sum(dim=2, keepdim=True)
    c = (Q * Sdot).sum(dim=1, keepdim=True)
    G = P + Q
    G.diagonal(dim1=1, dim2=2).sub_(2.0 * m.keep.to(S.dtype))
    G /= n
    Gdot = (P * (Sdot - r) + Q * (Sdot - c)) / n
    return G, Gdot
