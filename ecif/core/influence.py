"""ECIF and its variants at a fitted optimum (docs/math.md §5-§10).

For a training pair ``k`` and the full-objective Hessian ``H`` at ``theta_hat`` (regulariser
included, plus damping ``mu``), every variant predicts the parameter shift of removing ``k``:

=============  =========================================  ==============================================
variant        ``Delta theta(k)``                         role
=============  =========================================  ==============================================
``positive``   ``(1/n) H^-1 grad Pos_k``                  classical IF (own terms only)
``negative``   ``(1/n) H^-1 grad Neg_k``                  k as a negative, first order
``ecif``       ``(1/n) H^-1 grad [Pos_k + Neg_k]``        the paper's ECIF
``newton``     ``(1/n) H^-1 grad [Pos_k + NegExact_k]``   exact removal gradient, one Newton step with
                                                          the full-data ``H`` at ``theta_hat``
=============  =========================================  ==============================================

``Delta theta(k) ~ theta_hat_{-k} - theta_hat``. Influence scores on a validation loss are
``IS(k) = grad L_val(theta_hat)^T Delta theta(k) ~ L_val(theta_hat_{-k}) - L_val(theta_hat)``:
**negative IS means removing k lowers the validation loss, i.e. k is harmful**; rank "most
harmful first" by ascending IS. For a set ``R`` the ``positive``/``negative``/``ecif`` shifts are
sums over ``R``; ``newton`` uses the exact gradient difference ``grad L - grad L_{-R}`` at
``theta_hat`` (interactions inside a batch included).
"""

from __future__ import annotations

import torch

from ecif.core.objective import ContrastiveObjective
from ecif.core.solvers import DenseSolver, make_solver
from ecif.core.terms import DTYPE, VARIANT_TERMS, VARIANTS

__all__ = ["ECIF"]


def _check_variant(variant: str) -> tuple[str, ...]:
    if variant not in VARIANT_TERMS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}.")
    return VARIANT_TERMS[variant]


def _column(norms: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``norms (m,)`` as is for a ``(m,)`` ``like``, as a column ``(m, 1)`` for a ``(m, k)`` one."""
    return norms if like.ndim == 1 else norms[:, None]


class ECIF:
    """Influence engine for a :class:`~ecif.core.objective.ContrastiveObjective` at ``theta_hat``.

    Parameters
    ----------
    objective:
        The training objective ``L`` (its ``n`` is the ``1/n`` of every estimate).
    theta_hat:
        The fitted optimum ``(P,)``; fit it with :func:`ecif.core.fit.fit` to a small gradient norm.
    solver:
        ``"dense"``, ``"cg"``, ``"auto"`` or a ready solver object with ``solve(b)``.
    damping:
        ``mu >= 0`` in ``(H + mu I)^-1`` (ignored when a solver object is given).
    precision:
        ``"float64"`` (default) or ``"mixed"``: CG on float32 Hessian-vector products refined
        with float64 residuals to the same tolerance (:class:`~ecif.core.solvers.MixedPrecisionSolver`,
        docs/math.md §15); ignored when a solver object is given.
    """

    def __init__(self, objective: ContrastiveObjective, theta_hat: torch.Tensor, solver="auto",
                 damping: float = 0.0, precision: str = "float64", **solver_kwargs):
        self.objective = objective
        self.theta_hat = objective.param.check_theta(theta_hat)
        if isinstance(solver, str):
            solver = make_solver(objective, self.theta_hat, solver, damping, precision=precision, **solver_kwargs)
        self.solver = solver
        self.n = objective.n

    # ------------------------------------------------------------------ helpers
    def gradient_term(self, remove, variant: str = "ecif") -> torch.Tensor:
        """The gradient the solve acts on, ``(P,)``: ``(1/n) sum_{k in R} grad T_k(theta_hat)``
        for additive variants, ``grad L(theta_hat) - grad L_{-R}(theta_hat)`` for ``newton``."""
        names = _check_variant(variant)
        removed = self.objective._check_remove(remove)
        if variant == "newton":
            return self.objective.gradient(self.theta_hat) - self.objective.without(removed).gradient(
                self.theta_hat)
        idx = torch.as_tensor(removed, device=self.theta_hat.device)

        def selected(th):
            t = self.objective.pair_terms(th)
            return sum(t[name] for name in names)[idx].sum() / self.n

        return torch.func.grad(selected)(self.theta_hat)

    # ------------------------------------------------------------------ public API
    def param_shift(self, remove, variant: str = "ecif") -> torch.Tensor:
        """Predicted ``theta_hat_{-R} - theta_hat`` for removing ``R`` (index array or mask),
        shape ``(P,)``."""
        return self.solver.solve(self.gradient_term(remove, variant))

    def edited_params(self, remove, variant: str = "ecif") -> torch.Tensor:
        """The ECIF-edited model ``theta_hat + sum_{k in R} Delta theta(k)`` (no retraining)."""
        return self.theta_hat + self.param_shift(remove, variant)

    def influence_scores(self, val_gradient: torch.Tensor, variants=VARIANTS) -> dict[str, torch.Tensor]:
        """``IS(k)`` for every training pair, per variant: dict of ``(n,)`` tensors.

        ``val_gradient`` is ``grad L_val(theta_hat)`` ``(P,)``. One solve
        ``h = (H + mu I)^-1 grad L_val`` and one forward-mode pass give
        ``IS(k) = (1/n) grad T_k^T h`` for all ``k`` (docs/math.md §7). ``IS(k) < 0``: harmful.
        Pairs already removed from the objective get 0.
        """
        val_gradient = torch.as_tensor(val_gradient, dtype=DTYPE, device=self.theta_hat.device)
        if val_gradient.shape != (self.objective.n_params,):
            raise ValueError(
                f"val_gradient must have shape ({self.objective.n_params},), got {tuple(val_gradient.shape)}."
            )
        for v in variants:
            _check_variant(v)
        return self.scores_along(self.solver.solve(val_gradient), variants)

    def scores_along(self, direction: torch.Tensor, variants=VARIANTS) -> dict[str, torch.Tensor]:
        """``(1/n) grad T_k^T h`` for every training pair and a solved direction ``h`` ``(P,)``,
        per variant (dict of ``(n,)`` tensors): :meth:`influence_scores` once ``h = (H + mu I)^-1
        grad L_val`` is known, for callers that need ``h`` itself too. One forward-mode pass."""
        for v in variants:
            _check_variant(v)
        d = self.objective.directional_terms(self.theta_hat, direction)
        return {v: sum(d[t] for t in VARIANT_TERMS[v]) / self.n for v in variants}

    def predicted_change(self, val_gradient: torch.Tensor, remove, variant: str = "ecif") -> float:
        """``grad L_val^T Delta theta(R)``: predicted change of the validation loss for removing
        the whole set ``R`` (group influence)."""
        return float(torch.as_tensor(val_gradient, dtype=DTYPE, device=self.theta_hat.device) @ self.param_shift(remove, variant))

    def pair_shifts(self, indices=None, variant: str = "ecif", chunk_size: int = 64) -> torch.Tensor:
        """``Delta theta(k)`` for each ``k`` in ``indices`` as rows of a ``(len, P)`` matrix.
        Memory ``len * P``; for modest sets of pairs."""
        g = self.objective.pair_gradients(self.theta_hat, _check_variant(variant), indices, chunk_size) / self.n
        return self.solver.solve(g.T).T

    def relative_influence(self, item_gradient: torch.Tensor, indices=None, variant: str = "ecif",
                           chunk_size: int = 64) -> torch.Tensor:
        """``RIS(k, z) = grad l_z^T Delta theta(k) / ||Delta theta(k)||`` for ``k`` in ``indices``.

        ``item_gradient`` is ``grad l_z(theta_hat)`` ``(P,)`` of a test item's loss (e.g. the
        zero-shot loss of a mispredicted image)
        or a ``(P, m)`` matrix for ``m`` items, giving ``(len, m)``. Negative RIS: removing
        ``k`` lowers ``l_z`` (k pushes the model towards the error), per unit of parameter change.
        """
        gz = torch.as_tensor(item_gradient, dtype=DTYPE, device=self.theta_hat.device)
        g = self.objective.pair_gradients(self.theta_hat, _check_variant(variant), indices, chunk_size) / self.n
        num = g @ self.solver.solve(gz)
        return num / _column(self.shift_norms(g), num).clamp_min(1e-300)

    def shift_norms(self, pair_gradients: torch.Tensor) -> torch.Tensor:
        """``||(H + mu I)^-1 g_k||`` for the rows ``g_k`` of ``pair_gradients`` ``(m, P)``, shape
        ``(m,)``: ``||Delta theta(k)||`` when the rows are ``(1/n) grad T_k``. Independent of any
        test item, so a caller scoring many items computes it once. From the factorised Hessian
        (dense solver), else one solve per row."""
        if isinstance(self.solver, DenseSolver):
            return self.solver.inverse_norms(pair_gradients)
        return self.solver.solve(pair_gradients.T).norm(dim=0)

    def self_influence(self, indices=None, variant: str = "ecif", chunk_size: int = 64) -> torch.Tensor:
        """``grad Pos_k^T Delta theta(k)``: predicted change of pair ``k``'s own contrastive loss
        when ``k`` is removed, ``(len,)``. Large positive values: the model bends to fit ``k``
        (typical of misaligned pairs)."""
        own = self.objective.pair_gradients(self.theta_hat, ("pos",), indices, chunk_size)
        shifts = self.pair_shifts(indices, variant, chunk_size)
        return (own * shifts).sum(dim=1)
