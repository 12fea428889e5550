"""Closed-form edits of one linear map: a few keys are sent to new values, everything else moves little.

A linear layer ``W`` (``(d_out, d_in)``, applied as ``W k``) stores associations: the key ``k``
it receives at some token is turned into the value ``W k``. To change what the layer returns
for ``m`` keys ``K`` (``(m, d_in)``, one key per row) into target values ``V`` (``(m, d_out)``),
while disturbing the layer as little as possible on ordinary inputs, solve the ridge problem
(docs/math.md §19)

    min_{W'}  || W' K^T - V^T ||_F^2  +  ridge * || (W' - W) C^{1/2} ||_F^2 ,

where ``C`` (``(d_in, d_in)``, symmetric positive definite) is the second-moment matrix of
the keys the layer usually sees, so that changes along frequent key directions are expensive.
Its normal equations ``(W' - W)(K^T K + ridge C) = (V^T - W K^T) K`` give :func:`ridge_edit`
(one ``d_in x d_in`` solve). The push-through (Woodbury) identity turns the same solution into
the low-rank form of :func:`rank_one_edit`

    W' = W + R (ridge I_m + K C^{-1} K^T)^{-1} K C^{-1},    R = V^T - W K^T  (d_out, m),

which for one key is the rank-one update
``W' = W + (v* - W k)(C^{-1} k)^T / (ridge + k^T C^{-1} k)``. Properties by construction:
``W' k -> v*`` as ``ridge -> 0`` (the residual is ``ridge / (ridge + k^T C^{-1} k)`` of the
original one), and ``W' x = W x`` for every ``x`` with ``K C^{-1} x = 0`` (inputs that are
``C^{-1}``-orthogonal to every key are untouched).

Pure tensor math: float64 recommended (the tests use it); results follow the device and dtype
of ``W``. ``C=None`` means the identity.
"""

from __future__ import annotations

import torch

__all__ = ["edit_residual", "rank_one_edit", "ridge_edit"]


def _check(W, K, V, C, ridge):
    """Validated ``(W, K (m, d_in), V (m, d_out), C or None, single)``; ``single`` when one key was
    given as a vector (the result of the residual is then a vector too)."""
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise ValueError(f"W must be a (d_out, d_in) tensor, got {getattr(W, 'shape', type(W))}.")
    d_out, d_in = W.shape
    single = K.ndim == 1
    K = K.reshape(1, -1) if single else K
    V = V.reshape(1, -1) if V.ndim == 1 else V
    if K.ndim != 2 or K.shape[1] != d_in:
        raise ValueError(f"keys must have shape (d_in,) or (m, d_in) with d_in = {d_in} (the columns of W), "
                         f"got {tuple(K.shape)}; pass the input of W at the edited token.")
    if V.ndim != 2 or V.shape != (K.shape[0], d_out):
        raise ValueError(f"values must have shape ({K.shape[0]}, {d_out}) (one row of length d_out = W.shape[0] "
                         f"per key), got {tuple(V.shape)}.")
    if not float(ridge) >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    K, V = K.to(W.dtype), V.to(W.dtype)
    if C is not None:
        if C.shape != (d_in, d_in):
            raise ValueError(f"C must be the ({d_in}, {d_in}) key covariance, got {tuple(C.shape)}.")
        C = C.to(W.dtype)
        if not torch.allclose(C, C.T, rtol=1e-8, atol=1e-12 * float(C.abs().max().clamp_min(1e-300))):
            raise ValueError("C must be symmetric; pass (C + C.T) / 2.")
        if torch.linalg.cholesky_ex(C).info != 0:
            raise ValueError("C is not positive definite; add a multiple of the identity (shrinkage) or use more "
                             "keys than d_in to estimate it.")
    return K, V, C


def rank_one_edit(W: torch.Tensor, k: torch.Tensor, v_star: torch.Tensor, C: torch.Tensor | None = None,
                  ridge: float = 1e-6) -> torch.Tensor:
    """The edited matrix ``W'`` (``(d_out, d_in)``) of the low-rank closed form.

    ``k``: one key ``(d_in,)`` (rank-one update ``(v* - W k)(C^{-1} k)^T / (ridge + k^T C^{-1} k)``)
    or ``m`` keys ``(m, d_in)`` (rank-``m`` update ``R (ridge I + K C^{-1} K^T)^{-1} K C^{-1}``,
    ``R = V^T - W K^T``); ``v_star``: the target value(s) ``(d_out,)`` or ``(m, d_out)``; ``C``: the
    key second moment (symmetric positive definite, ``None``: identity); ``ridge >= 0`` (with
    ``ridge = 0`` the keys must be linearly independent). Equal to :func:`ridge_edit` for
    ``ridge > 0``; costs one Cholesky of ``C`` and an ``m x m`` solve."""
    K, V, C = _check(W, k, v_star, C, ridge)
    Ck = K.T if C is None else torch.cholesky_solve(K.T, torch.linalg.cholesky(C))  # C^{-1} K^T (d_in, m)
    G = K @ Ck  # K C^{-1} K^T (m, m)
    R = V.T - W @ K.T  # (d_out, m)
    A = G + float(ridge) * torch.eye(G.shape[0], dtype=W.dtype, device=W.device)
    return W + torch.linalg.solve(A, R.T).T @ Ck.T


def ridge_edit(W: torch.Tensor, K: torch.Tensor, V: torch.Tensor, C: torch.Tensor | None = None,
               ridge: float = 1e-6) -> torch.Tensor:
    """The explicit minimiser of ``||W' K^T - V^T||_F^2 + ridge ||(W' - W) C^{1/2}||_F^2`` from its
    normal equations ``(W' - W)(K^T K + ridge C) = (V^T - W K^T) K`` (one ``d_in x d_in`` solve);
    ``K`` ``(m, d_in)`` or ``(d_in,)``, ``V`` ``(m, d_out)`` or ``(d_out,)``; ``ridge > 0``. The reference
    :func:`rank_one_edit` is checked against."""
    K, V, C = _check(W, K, V, C, ridge)
    if not float(ridge) > 0:
        raise ValueError("ridge_edit needs ridge > 0 (the normal matrix K^T K alone is singular when m < d_in).")
    d_in = W.shape[1]
    Cm = torch.eye(d_in, dtype=W.dtype, device=W.device) if C is None else C
    A = K.T @ K + float(ridge) * Cm  # (d_in, d_in), symmetric positive definite
    B = (V.T - W @ K.T) @ K  # (d_out, d_in)
    return W + torch.linalg.solve(A, B.T).T


def edit_residual(W_edited: torch.Tensor, k: torch.Tensor, v_star: torch.Tensor) -> torch.Tensor:
    """``W' k - v*`` per key: ``(d_out,)`` for one key, ``(m, d_out)`` for keys ``(m, d_in)``."""
    return (k.to(W_edited.dtype) @ W_edited.T) - v_star.to(W_edited.dtype)
