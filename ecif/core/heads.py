"""Trainable parametrizations on top of frozen CLIP features.

Both map frozen image features ``x`` (``(n, d_img)``) and text features ``y`` (``(n, d_txt)``)
to unnormalised embeddings ``W_img x`` and ``W_txt y`` of width ``e``, and carry the log
logit-scale ``t`` (logit scale ``s = exp(t)``). All trainable parameters live in one flat float64
vector ``theta`` of length :attr:`n_params`; ``theta0`` is its starting value, and the objective
regularises towards ``theta0`` (never towards zero: with normalised embeddings the loss is
invariant to the scale of a projection, so a pull to zero has no minimum).

* :class:`LinearHeads`: ``theta = [vec(W_img), vec(W_txt), t]``, started at base projections.
* :class:`LoRAHeads`: ``W = W0 + B A`` with frozen ``W0`` and rank-``r`` factors,
  ``theta = [vec(A_img), vec(B_img), vec(A_txt), vec(B_txt), t]``, started at ``B = 0`` and a
  seeded random ``A`` (the usual LoRA initialisation), so ``W(theta0) = W0``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.func import jvp

from ecif.core.terms import DTYPE, device_of

__all__ = ["Parametrization", "LinearHeads", "LoRAHeads", "Prepared"]


def _as_matrix(w, name: str, device=None) -> torch.Tensor:
    device = device_of(w) if device is None else device
    t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w, device=device).to(DTYPE)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a matrix (e, d), got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf values.")
    return t.clone()


@dataclass
class Prepared:
    """Frozen features turned into what :meth:`Parametrization.embed` needs (cached products)."""

    x: torch.Tensor
    y: torch.Tensor
    x_base: torch.Tensor | None = None  # x @ W0_img.T  (LoRA only)
    y_base: torch.Tensor | None = None  # y @ W0_txt.T


class Parametrization:
    """Interface: a flat parameter vector ``theta`` -> embeddings and log logit-scale."""

    d_img: int
    d_txt: int
    width: int
    n_params: int
    theta0: torch.Tensor
    #: Whether :meth:`ContrastiveObjective.hvp` uses the structured product (forward mode through
    #: :meth:`embed_jvp`, closed-form curvature of the batch similarities) or double backward.
    #: The structured one pays when the map ``theta -> embeddings`` is cheap (projection heads);
    #: through transformer blocks double backward is faster (:class:`ecif.core.blocks.BlockLoRA`).
    structured_hvp: bool = True

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> Prepared:
        """Cache what does not depend on ``theta`` (shapes are checked by the objective)."""
        return Prepared(x=x, y=y)

    def take(self, data: Prepared, rows) -> Prepared:
        """The prepared data of the pairs ``rows`` (an index tensor, in any order and with repeats,
        or a slice), contiguous: what :meth:`embed` needs for those pairs only (the objective
        keeps a copy in batch order and embeds batch chunks of it)."""
        out = {}
        for f in fields(data):
            v = getattr(data, f.name)
            out[f.name] = None if v is None else v[rows].contiguous()
        return type(data)(**out)

    def embed(self, theta: torch.Tensor, data: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised embeddings ``(n, e)`` of images and texts."""
        raise NotImplementedError

    def embed_jvp(self, theta: torch.Tensor, v: torch.Tensor, data: Prepared):
        """Unnormalised embeddings and their derivative along ``v``: ``(W_img x, W_txt y,
        d/de W_img(theta + e v) x, d/de W_txt(theta + e v) y)``, four ``(n, e)`` tensors,
        differentiable in ``theta`` by reverse mode. Default: forward-mode autodiff; the
        parametrizations below write it out (several times faster on the CPU)."""
        (u, w), (u_dot, w_dot) = jvp(lambda z: self.embed(z, data), (theta,), (v,))
        return u, w, u_dot, w_dot

    #: Whether the parametrization computes the batch cosines ``C = U W^T`` itself from
    #: per-batch constants (:meth:`batch_constants`, :meth:`batch_cosines`) instead of from the
    #: embeddings: LoRA heads write ``C`` as a frozen base plus low-rank corrections, so no
    #: product of the full embedding width runs per evaluation.
    low_rank_cosines: bool = False

    def batch_constants(self, data: Prepared, b: int) -> torch.Tensor | None:
        """What :meth:`batch_cosines` needs per batch that no ``theta`` changes, computed once
        from the batch-ordered prepared data (rows ``(M * b, .)``, ``b`` slots per batch).
        ``None``: none (the objective embeds and normalises instead)."""
        return None

    def batch_cosines(self, theta: torch.Tensor, data: Prepared, const: torch.Tensor, b: int,
                      v: torch.Tensor | None = None):
        """Cosines ``C[m, i, j] = <u_i, w_j>`` of the normalised embeddings of batches of ``b``
        slots (rows of ``data`` in slot order, ``const`` their :meth:`batch_constants`),
        ``(m, b, b)``; with ``v``, also ``Cdot``, the derivative of ``C`` along ``v`` (then a
        pair ``(C, Cdot)``). Differentiable in ``theta`` by reverse mode. Only for
        parametrizations with :attr:`low_rank_cosines`."""
        raise NotImplementedError

    def encode_images(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings ``(n, e)`` of any image feature rows ``x (n, d_img)`` (not
        only the objective's pairs): ``x W_img(theta)^T`` for projection heads."""
        return x @ self.image_projection(theta).T

    def encode_texts(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings ``(n, e)`` of any text feature rows ``y (n, d_txt)`` (class
        prompts, other splits): ``y W_txt(theta)^T`` for projection heads."""
        return y @ self.text_projection(theta).T

    def image_projection(self, theta: torch.Tensor) -> torch.Tensor:
        """The effective image projection ``W_img(theta)`` of shape ``(e, d_img)``."""
        raise NotImplementedError

    def text_projection(self, theta: torch.Tensor) -> torch.Tensor:
        """The effective text projection ``W_txt(theta)`` of shape ``(e, d_txt)``."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the parameters live (the device of ``theta0``); the objective puts its features
        there and every computation runs there."""
        return self.theta0.device

    def log_scale(self, theta: torch.Tensor) -> torch.Tensor:
        """The log logit-scale ``t`` (last entry of ``theta``); the logit scale is ``exp(t)``.
        Linear in ``theta`` (a selection), so ``log_scale(v)`` is its derivative along ``v``."""
        return theta[-1]

    def check_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """Validate a parameter vector: shape ``(n_params,)``, finite; returned as float64."""
        theta = torch.as_tensor(theta, device=self.device)
        if theta.shape != (self.n_params,):
            raise ValueError(
                f"theta must have shape ({self.n_params},) for {type(self).__name__}, got "
                f"{tuple(theta.shape)}."
            )
        if not torch.isfinite(theta).all():
            raise ValueError("theta contains NaN or Inf values.")
        return theta.to(DTYPE)


class LinearHeads(Parametrization):
    """Full linear projection heads ``W_img (e, d_img)``, ``W_txt (e, d_txt)`` and ``t``.

    ``n_params = e*d_img + e*d_txt + 1``. ``theta0`` packs the given base projections and
    ``log_scale0``. ``device``: where the heads live (default: the device of ``w_img0``, the CPU
    for arrays); an objective on these heads puts its features there and computes there.
    """

    def __init__(self, w_img0, w_txt0, log_scale0: float, device=None):
        w_img0 = _as_matrix(w_img0, "w_img0", device)
        w_txt0 = _as_matrix(w_txt0, "w_txt0", w_img0.device)
        if w_img0.shape[0] != w_txt0.shape[0]:
            raise ValueError(
                f"image and text projections must share the embedding width e, got "
                f"{w_img0.shape[0]} and {w_txt0.shape[0]}."
            )
        self.width, self.d_img = w_img0.shape
        self.d_txt = w_txt0.shape[1]
        self._n_img = self.width * self.d_img
        self._n_txt = self.width * self.d_txt
        self.n_params = self._n_img + self._n_txt + 1
        self.theta0 = torch.cat(
            [w_img0.reshape(-1), w_txt0.reshape(-1), torch.tensor([float(log_scale0)], dtype=DTYPE, device=w_img0.device)]
        )

    def image_projection(self, theta):
        return theta[: self._n_img].reshape(self.width, self.d_img)

    def text_projection(self, theta):
        return theta[self._n_img : self._n_img + self._n_txt].reshape(self.width, self.d_txt)

    def embed(self, theta, data):
        return data.x @ self.image_projection(theta).T, data.y @ self.text_projection(theta).T

    def embed_jvp(self, theta, v, data):
        u, w = self.embed(theta, data)
        u_dot, w_dot = self.embed(v, data)  # linear in theta
        return u, w, u_dot, w_dot


class LoRAHeads(Parametrization):
    """LoRA adapters of rank ``r`` on fixed base projections: ``W = W0 + B A``.

    Shapes: ``A_img (r, d_img)``, ``B_img (e, r)``, ``A_txt (r, d_txt)``, ``B_txt (e, r)``;
    ``n_params = r*(d_img + d_txt + 2e) + 1``. ``theta0``: ``A ~ N(0, 1/d)`` drawn from ``seed``,
    ``B = 0``, ``t = log_scale0``. Note the symmetry ``B A = (B G)(G^-1 A)``: the unregularised
    Hessian is singular along it; the L2 pull to ``theta0`` (and damping) removes that.
    ``device``: as :class:`LinearHeads`; ``A`` is drawn on the CPU and moved, so ``theta0`` is
    the same on every device.
    """

    def __init__(self, w_img0, w_txt0, log_scale0: float, rank: int = 4, seed: int = 0, device=None):
        self.w_img0 = _as_matrix(w_img0, "w_img0", device)
        self.w_txt0 = _as_matrix(w_txt0, "w_txt0", self.w_img0.device)
        dev = self.w_img0.device
        if self.w_img0.shape[0] != self.w_txt0.shape[0]:
            raise ValueError(
                f"image and text projections must share the embedding width e, got "
                f"{self.w_img0.shape[0]} and {self.w_txt0.shape[0]}."
            )
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.rank = int(rank)
        self.width, self.d_img = self.w_img0.shape
        self.d_txt = self.w_txt0.shape[1]
        r, e = self.rank, self.width
        sizes = [r * self.d_img, e * r, r * self.d_txt, e * r]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.n_params = int(self._offsets[-1]) + 1
        # drawn on the CPU and then moved: the same theta0 on every device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        a_img = (torch.randn(r, self.d_img, generator=gen, dtype=DTYPE, device="cpu") / np.sqrt(self.d_img)).to(dev)
        a_txt = (torch.randn(r, self.d_txt, generator=gen, dtype=DTYPE, device="cpu") / np.sqrt(self.d_txt)).to(dev)
        self.theta0 = torch.cat(
            [
                a_img.reshape(-1),
                torch.zeros(e * r, dtype=DTYPE, device=dev),
                a_txt.reshape(-1),
                torch.zeros(e * r, dtype=DTYPE, device=dev),
                torch.tensor([float(log_scale0)], dtype=DTYPE, device=dev),
            ]
        )

    def factors(self, theta):
        """``(A_img, B_img, A_txt, B_txt)`` as views of ``theta``."""
        o, r, e = self._offsets, self.rank, self.width
        return (
            theta[o[0] : o[1]].reshape(r, self.d_img),
            theta[o[1] : o[2]].reshape(e, r),
            theta[o[2] : o[3]].reshape(r, self.d_txt),
            theta[o[3] : o[4]].reshape(e, r),
        )

    def prepare(self, x, y):
        return Prepared(x=x, y=y, x_base=x @ self.w_img0.T, y_base=y @ self.w_txt0.T)

    def image_projection(self, theta):
        a, b, _, _ = self.factors(theta)
        return self.w_img0 + b @ a

    def text_projection(self, theta):
        _, _, a, b = self.factors(theta)
        return self.w_txt0 + b @ a

    def embed(self, theta, data):
        a_i, b_i, a_t, b_t = self.factors(theta)
        return data.x_base + (data.x @ a_i.T) @ b_i.T, data.y_base + (data.y @ a_t.T) @ b_t.T

    low_rank_cosines = True

    def batch_constants(self, data, b):
        """The frozen base's cosine numerators ``K[m] = Xb_m Yb_m^T`` per batch, ``(M, b, b)``,
        with ``Xb = x W0_img^T``, ``Yb = y W0_txt^T`` the base embeddings of the batch's slots."""
        xb = data.x_base.reshape(-1, b, self.width)
        yb = data.y_base.reshape(-1, b, self.width)
        return xb @ yb.transpose(1, 2)

    def batch_cosines(self, theta, data, const, b, v=None):
        """``C = D_u^-1 R D_w^-1`` (and ``Cdot``) from the raw numerators ``R = U W^T`` of the
        unnormalised embeddings ``U = Xb + P B_i^T``, ``W = Yb + Q B_t^T`` (``P = x A_i^T``,
        ``Q = y A_t^T``, ``(N, r)``), without forming ``U`` or ``W``:

            ``R = K + (Xb B_t + P B_i^T B_t) Q^T + P (Yb B_i)^T``,

        a rank-``2r`` correction of the batch constant ``K`` (:meth:`batch_constants`), and the
        row norms ``rho_u^2 = |Xb|^2 + 2 <Xb B_i, P> + |P B_i^T|^2`` (the same for ``W``). Along
        ``v = (dA_i, dB_i, dA_t, dB_t, dt)``, with ``Pd = x dA_i^T``, ``Qd = y dA_t^T``,
        ``Rdot = Udot W^T + U Wdot^T`` is a rank-``4r`` product, ``alpha_u = <U, Udot> / rho_u^2``
        (the same for ``W``), and ``Cdot = D_u^-1 Rdot D_w^-1 - alpha_u C - C alpha_w^T``
        (rowwise and columnwise). Cost per batch ``O(b^2 r + b e r + b d r)``: no product of
        width ``e`` over slot pairs (docs/math.md §21). Equal to normalising :meth:`embed`
        and multiplying out, to rounding (tested)."""
        a_i, b_i, a_t, b_t = self.factors(theta)
        r = self.rank
        xb, yb = data.x_base, data.y_base
        if v is None:
            p, q = data.x @ a_i.T, data.y @ a_t.T
            xbb, ybb = xb @ torch.cat([b_i, b_t], 1), yb @ torch.cat([b_i, b_t], 1)
        else:
            da_i, db_i, da_t, db_t = self.factors(v)
            # the products with the tangent's factors apart: no reverse pass through them
            p, q, pd, qd = data.x @ a_i.T, data.y @ a_t.T, data.x @ da_i.T, data.y @ da_t.T
            xbb = torch.cat([xb @ torch.cat([b_i, b_t], 1), xb @ torch.cat([db_i, db_t], 1)], 1)
            ybb = torch.cat([yb @ torch.cat([b_i, b_t], 1), yb @ torch.cat([db_i, db_t], 1)], 1)
        xbi, xbt, ybi, ybt = xbb[:, :r], xbb[:, r:2 * r], ybb[:, :r], ybb[:, r:2 * r]
        gram_i, gram_t, cross = b_i.T @ b_i, b_t.T @ b_t, b_i.T @ b_t
        left = xbt + p @ cross  # rows of U B_t
        rho_u = ((xb * xb).sum(1) + 2.0 * (xbi * p).sum(1) + ((p @ gram_i) * p).sum(1)).sqrt()
        rho_w = ((yb * yb).sum(1) + 2.0 * (ybt * q).sum(1) + ((q @ gram_t) * q).sum(1)).sqrt()

        def batched(z):
            return z.reshape(-1, b, z.shape[-1])

        inv_u, inv_w = batched((1.0 / rho_u)[:, None]), batched((1.0 / rho_w)[:, None]).transpose(1, 2)
        numer = const + batched(torch.cat([left, p], 1)) @ batched(torch.cat([q, ybi], 1)).transpose(1, 2)
        c = numer * inv_u * inv_w
        if v is None:
            return c
        xdbi, xdbt, ydbi, ydbt = xbb[:, 2 * r:3 * r], xbb[:, 3 * r:], ybb[:, 2 * r:3 * r], ybb[:, 3 * r:]
        mix = pd @ cross + p @ (db_i.T @ b_t + b_i.T @ db_t) + xdbt
        rdot = (batched(torch.cat([pd, mix, p, left], 1))
                @ batched(torch.cat([ybi, q, ydbi, qd], 1)).transpose(1, 2))
        alpha_u = (((xbi + p @ gram_i) * pd).sum(1) + ((xdbi + p @ (b_i.T @ db_i)) * p).sum(1)) / rho_u**2
        alpha_w = (((ybt + q @ gram_t) * qd).sum(1) + ((ydbt + q @ (b_t.T @ db_t)) * q).sum(1)) / rho_w**2
        c_dot = rdot * inv_u * inv_w - batched(alpha_u[:, None]) * c - c * batched(alpha_w[:, None]).transpose(1, 2)
        return c, c_dot

    def embed_jvp(self, theta, v, data):
        a_i, b_i, a_t, b_t = self.factors(theta)
        da_i, db_i, da_t, db_t = self.factors(v)
        xa, ya = data.x @ a_i.T, data.y @ a_t.T
        u = data.x_base + xa @ b_i.T
        w = data.y_base + ya @ b_t.T
        # d(B A x) = B (dA x) + dB (A x)
        u_dot = (data.x @ da_i.T) @ b_i.T + xa @ db_i.T
        w_dot = (data.y @ da_t.T) @ b_t.T + ya @ db_t.T
        return u, w, u_dot, w_dot
