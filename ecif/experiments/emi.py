"""Effective mutual information (EMI), its shift difference (EMID) and the JSD upper bound.

Oh et al. (ICML 2025, arXiv 2502.00577) judge a model by how much information its responses
carry about the inputs, *relative to* reference responses on the same inputs:

    EMI(P; theta) = I(X; Y_hat) - I(X; Y)        (X ~ P, Y_hat = model response, Y = reference)
    EMID(P, Q; theta) = EMI(P; theta) - EMI(Q; theta)

A positive EMID means the model lost effectiveness when moving from the set ``P`` to the shifted
set ``Q``. Everything here works on *embeddings* (rows of float arrays), as the paper does: the
mutual information of high-dimensional raw inputs is estimated on frozen feature vectors.

Estimators (this module's own implementation; the definitions follow the papers):

* **CLUB** (Cheng et al., ICML 2020), the contrastive log-ratio upper bound of I(X; Y). With a
  variational conditional density ``q(y | x)``,

      CLUB = mean_i log q(y_i | x_i) - mean_i mean_j log q(y_j | x_i),

  matched pairs minus all pairings. When ``q`` equals the true conditional the value is at or
  above the true MI. We use a Gaussian ``q(y | x) = N(mu(x), diag(s^2(x)))``; its normalising
  constant depends on ``x_i`` only and cancels between the two averages, and the all-pairs
  average is exact in O(n d) (mean over j of ``(y_j - mu)^2`` is ``(mean(y) - mu)^2 + var(y)``).
  Two fits of ``q``: ``"linear"`` (closed form: ridge regression for the mean, the residual
  variance per output dimension; the maximum-likelihood linear-Gaussian model) and ``"mlp"`` (a
  small tanh network for the mean and one for the log-variance, trained by maximum likelihood
  with Adam, as in the CLUB paper). ``folds > 1`` cross-fits: ``q`` is fitted on the other folds
  and the bound averaged over the held-out folds, so a flexible ``q`` cannot inflate the value by
  memorising the pairs. For jointly Gaussian ``x, y`` with per-dimension correlation ``rho`` the
  exact-``q`` value is ``rho^2 / (1 - rho^2)`` per dimension, against the true
  ``-1/2 log(1 - rho^2)``.
* **Representation JSD** (Hoyos-Osorio and Sanchez-Giraldo; the paper's divergence estimator).
  A set of embeddings ``Z (n, d)`` is summarised by its *uncentred* covariance ``Z^T Z``
  divided by its trace, a density matrix ``rho`` (symmetric, positive semi-definite, trace 1).
  With the von Neumann entropy ``S(rho) = -sum_k l_k log l_k`` over the eigenvalues ``l_k > 0``,

      JSD(Z_a, Z_b) = S((rho_a + rho_b) / 2) - (S(rho_a) + S(rho_b)) / 2,

  in nats. It is 0 for identical sets, symmetric, at most ``log 2`` (reached when the two sets
  span orthogonal subspaces), and for two sets with the same trace (e.g. equal-size sets of unit
  vectors) ``(rho_a + rho_b) / 2`` is exactly the density matrix of their union.
* **The bound** on EMID (paper, Theorem on the EMID upper bound; public code ``EMIDupperbound``).
  With ``J_v = JSD(P_Xv, Q_Xv)``, ``J_t = JSD(P_Xt, Q_Xt)`` (visual and text inputs of the two
  sets) and the output terms ``J_P = JSD(P_Yhat, P_Y)``, ``J_Q = JSD(Q_Yhat, Q_Y)`` (model
  responses against reference responses, within each set), we compute

      bound = c_in * (J_v^(1/2) + J_t^(1/2)) + c_out * (J_P^(1/4) + J_Q^(1/4)).

  ``form="scale_adjusted"`` (default) takes ``c_in = c_out = 1``: the form the authors' code
  uses for its correlation studies (the constants only rescale the two groups of terms).
  ``form="theoretical"`` takes ``c_out = 4`` and ``c_in = entropy_scale``, a bound on the
  entropy of the responses that the theorem needs and the user must supply (for a retrieval
  model, ``log`` of the caption-bank size is one). Being built from divergences of marginals,
  the bound cannot see a change that keeps every marginal (a shuffle of pairs) and its output
  terms cannot tell a wrong-but-consistent response from a right one only through MI: see the
  ``emi`` notebook.

Sign and units: every information quantity is in nats; EMI <= 0 typically (a model's responses
carry at most the reference's information about the inputs), EMID > 0 = worse on ``Q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ecif.core.terms import DTYPE, device_of

__all__ = [
    "GaussianConditional",
    "fit_linear_gaussian",
    "fit_mlp_gaussian",
    "club",
    "club_with",
    "density_matrix",
    "von_neumann_entropy",
    "representation_jsd",
    "EMIResult",
    "emi",
    "emid",
    "emid_bound",
    "discrete_mi",
    "BOUND_FORMS",
]

BOUND_FORMS = ("scale_adjusted", "theoretical")


def _t(a) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=DTYPE, device=device_of(a))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"expected a 2-d array (n, d) of embeddings, got shape {tuple(t.shape)}")
    return t


# ----------------------------------------------------------------------------------- CLUB


@dataclass
class GaussianConditional:
    """A fitted ``q(y | x) = N(mean(x), diag(var(x)))``; ``predict(x)`` gives ``(mean, var)``,
    both ``(n, d_y)``."""

    predict_fn: object
    kind: str

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict_fn(_t(x))

    def club(self, x, y) -> float:
        """CLUB estimate of ``I(X; Y)`` on the pairs ``(x_i, y_i)`` under this ``q``."""
        x, y = _t(x), _t(y)
        if len(x) != len(y):
            raise ValueError(f"x and y must hold the same number of rows, got {len(x)} and {len(y)}")
        mu, var = self.predict(x)
        pos = ((y - mu) ** 2 / (2 * var)).sum(1)  # -log q(y_i|x_i) up to the x_i-only constant
        y_mean, y_var = y.mean(0), y.var(0, unbiased=False)
        neg = (((y_mean - mu) ** 2 + y_var) / (2 * var)).sum(1)  # mean over j of -log q(y_j|x_i)
        return float((neg - pos).mean())


def fit_linear_gaussian(x, y, ridge: float = 1e-3, min_var: float = 1e-6) -> GaussianConditional:
    """Closed-form linear-Gaussian ``q(y|x)``: mean ``x A + b`` by ridge regression (penalty
    ``ridge * trace(Xc^T Xc) / d_x`` on ``A``, intercept free), variance = the mean squared
    residual per output dimension (floored at ``min_var``)."""
    x, y = _t(x), _t(y)
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc
    pen = ridge * float(torch.trace(gram)) / max(x.shape[1], 1) + 1e-12
    A = torch.linalg.solve(gram + pen * torch.eye(x.shape[1], dtype=DTYPE, device=x.device), xc.T @ yc)
    var = ((yc - xc @ A) ** 2).mean(0).clamp_min(min_var)

    def predict(z):
        return ym + (z - xm) @ A, var.expand(len(z), -1)

    return GaussianConditional(predict, "linear")


def fit_mlp_gaussian(x, y, hidden: int = 32, epochs: int = 300, lr: float = 5e-3,
                     seed: int = 0) -> GaussianConditional:
    """``q(y|x)`` with a one-hidden-layer tanh network for the mean and another for the
    log-variance (bounded by tanh to within e^-2 and e^2 times the variance of the standardised data),
    trained full-batch with Adam on the Gaussian log-likelihood. Seeded; float64."""
    x, y = _t(x), _t(y)
    xm, xs = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    ym, ys = y.mean(0), y.std(0, unbiased=False).clamp_min(1e-8)
    xn, yn = (x - xm) / xs, (y - ym) / ys
    gen = torch.Generator(device="cpu").manual_seed(seed)  # drawn on the CPU: the same start on every device
    dx, dy = x.shape[1], y.shape[1]

    def layer(i, o):
        w = (torch.randn(i, o, generator=gen, dtype=DTYPE, device="cpu") / math.sqrt(i)).to(x.device)
        return w.requires_grad_(), torch.zeros(o, dtype=DTYPE, device=x.device, requires_grad=True)

    w1, b1 = layer(dx, hidden)
    w2, b2 = layer(hidden, dy)
    v1, c1 = layer(dx, hidden)
    v2, c2 = layer(hidden, dy)
    params = [w1, b1, w2, b2, v1, c1, v2, c2]

    def heads(z):
        mu = torch.tanh(z @ w1 + b1) @ w2 + b2
        logvar = 2.0 * torch.tanh(torch.tanh(z @ v1 + c1) @ v2 + c2)  # within [-2, 2] in data units
        return mu, logvar

    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        mu, logvar = heads(xn)
        nll = (((yn - mu) ** 2) / logvar.exp() + logvar).sum(1).mean()
        opt.zero_grad()
        nll.backward()
        opt.step()

    def predict(z):
        with torch.no_grad():
            mu, logvar = heads((z - xm) / xs)
        return ym + mu * ys, logvar.exp() * ys**2

    return GaussianConditional(predict, "mlp")


def club_with(q: GaussianConditional, x, y) -> float:
    """CLUB estimate of ``I(X; Y)`` with an already fitted ``q`` (e.g. one fitted on reference
    data and shared by several sets, as in the paper's released estimator)."""
    return q.club(x, y)


def _fit(x, y, method: str, ridge: float, seed: int, **mlp) -> GaussianConditional:
    if method == "linear":
        return fit_linear_gaussian(x, y, ridge=ridge)
    if method == "mlp":
        return fit_mlp_gaussian(x, y, seed=seed, **mlp)
    raise ValueError(f"unknown CLUB method {method!r}; choose 'linear' or 'mlp'")


def club(x, y, *, method: str = "linear", ridge: float = 1e-3, folds: int = 1, seed: int = 0,
         **mlp) -> float:
    """CLUB estimate of ``I(X; Y)`` (nats) from pairs ``x (n, d_x)``, ``y (n, d_y)``.

    ``q(y|x)`` is fitted on the pairs themselves (``folds=1``) or cross-fitted (``folds=k``:
    seeded random folds, ``q`` fitted on ``k-1`` folds and the bound computed on the held-out
    one, averaged over folds weighted by size). ``method``: ``"linear"`` (closed form, ``ridge``)
    or ``"mlp"`` (``hidden``, ``epochs``, ``lr`` passed on)."""
    x, y = _t(x), _t(y)
    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y must hold the same number of rows, got {n} and {len(y)}")
    if folds < 1 or folds > n // 2:
        raise ValueError(f"folds must lie in [1, n/2 = {n // 2}], got {folds}")
    if folds == 1:
        return _fit(x, y, method, ridge, seed, **mlp).club(x, y)
    order = np.random.default_rng(seed).permutation(n)
    total = 0.0
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        q = _fit(x[rest], y[rest], method, ridge, seed, **mlp)
        total += q.club(x[part], y[part]) * len(part)
    return total / n


# ------------------------------------------------------------------------ representation JSD


def density_matrix(z) -> torch.Tensor:
    """``Z^T Z / trace(Z^T Z)`` (d, d): the trace-normalised uncentred covariance of the rows."""
    z = _t(z)
    c = z.T @ z
    tr = torch.trace(c)
    if not tr > 0:
        raise ValueError("the embeddings are all zero: no density matrix")
    return c / tr


def von_neumann_entropy(rho: torch.Tensor, eps: float = 1e-12) -> float:
    """``-sum l log l`` over the eigenvalues ``l > eps`` of a density matrix (nats)."""
    lam = torch.linalg.eigvalsh(0.5 * (rho + rho.T)).clamp_min(0.0)
    lam = lam / lam.sum()
    lam = lam[lam > eps]
    return float(-(lam * lam.log()).sum())


def representation_jsd(a, b) -> float:
    """Representation Jensen-Shannon divergence (nats, in [0, log 2]) between the embedding sets
    ``a (n_a, d)`` and ``b (n_b, d)`` (see the module docstring)."""
    ra, rb = density_matrix(a), density_matrix(b)
    if ra.shape != rb.shape:
        raise ValueError(f"both sets need the same embedding width, got {ra.shape[0]} and {rb.shape[0]}")
    val = von_neumann_entropy(0.5 * (ra + rb)) - 0.5 * (von_neumann_entropy(ra) + von_neumann_entropy(rb))
    return float(min(max(val, 0.0), math.log(2.0)))


# ------------------------------------------------------------------------------- EMI, EMID


@dataclass
class EMIResult:
    """``emi = mi_model - mi_reference`` (nats): ``mi_model`` = I(X; Y_hat), ``mi_reference`` =
    I(X; Y), both CLUB estimates."""

    emi: float
    mi_model: float
    mi_reference: float

    def as_dict(self) -> dict:
        return {"emi": self.emi, "mi_model": self.mi_model, "mi_reference": self.mi_reference}


def emi(x, y_hat, y, *, q: GaussianConditional | None = None, **club_kw) -> EMIResult:
    """EMI(P; theta) = I(X; Y_hat) - I(X; Y) on one set: ``x (n, d_x)`` input embeddings,
    ``y_hat (n, d_y)`` embeddings of the model's responses, ``y (n, d_y)`` of the reference
    responses. With ``q`` given, both MI terms use that shared, pre-fitted estimator (the paper's
    protocol); otherwise each term is estimated with its own fit (:func:`club`, ``club_kw``), so
    the estimate follows the MI of each joint distribution."""
    if q is not None:
        mm, mr = q.club(x, y_hat), q.club(x, y)
    else:
        mm, mr = club(x, y_hat, **club_kw), club(x, y, **club_kw)
    return EMIResult(mm - mr, mm, mr)


def emid(emi_p: EMIResult | float, emi_q: EMIResult | float) -> float:
    """EMID(P, Q; theta) = EMI(P) - EMI(Q); positive = the model is less effective on Q."""
    a = emi_p.emi if isinstance(emi_p, EMIResult) else float(emi_p)
    b = emi_q.emi if isinstance(emi_q, EMIResult) else float(emi_q)
    return a - b


def emid_bound(p_xv, p_xt, p_yhat, p_y, q_xv, q_xt, q_yhat, q_y, *, form: str = "scale_adjusted",
               entropy_scale: float | None = None) -> dict:
    """The JSD upper bound of EMID between the sets P and Q (see the module docstring).

    Arguments are embedding sets: visual inputs ``*_xv``, text inputs ``*_xt``, model responses
    ``*_yhat`` and reference responses ``*_y`` of P and of Q. ``form="theoretical"`` needs
    ``entropy_scale``. Returns ``bound`` and its terms ``jsd_v``, ``jsd_t``, ``jsd_p_out``,
    ``jsd_q_out``, ``input_part``, ``output_part``."""
    if form not in BOUND_FORMS:
        raise ValueError(f"unknown bound form {form!r}; choose one of {BOUND_FORMS}")
    if form == "theoretical":
        if entropy_scale is None or entropy_scale <= 0:
            raise ValueError("form='theoretical' needs a positive entropy_scale (e.g. log of the bank size)")
        c_in, c_out = float(entropy_scale), 4.0
    else:
        c_in, c_out = 1.0, 1.0
    jv, jt = representation_jsd(p_xv, q_xv), representation_jsd(p_xt, q_xt)
    jp, jq = representation_jsd(p_yhat, p_y), representation_jsd(q_yhat, q_y)
    inp = c_in * (math.sqrt(jv) + math.sqrt(jt))
    out = c_out * (jp**0.25 + jq**0.25)
    return {"bound": inp + out, "jsd_v": jv, "jsd_t": jt, "jsd_p_out": jp, "jsd_q_out": jq,
            "input_part": inp, "output_part": out}


# --------------------------------------------------------------------------- discrete MI


def discrete_mi(a, b) -> float:
    """Plug-in mutual information (nats) of two discrete label arrays of equal length: the
    exact MI of their empirical joint distribution. Invariant to any relabelling of either."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("a and b must be non-empty and of equal length")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())
