"""The teaching path of notebook 00: influence functions from zero, on problems small enough to
retrain exactly (docs/math.md gives the conventions; this module only applies them).

Two problems, both in float64 and fitted to a tight gradient tolerance so that leave-one-out
retraining is a real ground truth:

* **Pointwise and convex**: L2-regularised logistic regression on two digit classes of the
  scikit-learn digits (64 pixel features scaled to [0, 1] plus a bias),

      L(theta) = (1/n) sum_k l_k(theta) + (lam/2) ||theta||^2,   l_k = log(1 + exp(-y_k x_k^T theta)),

  with y_k in {-1, +1}. As in docs/math.md §3 removing point k keeps the factor 1/n and the
  regulariser, so the first-order shift is Delta theta(k) = (1/n) H^-1 grad l_k(theta_hat)
  (docs/math.md §5) and the influence on the test loss is IS(k) = grad L_test^T Delta theta(k),
  an estimate of L_test(theta_hat_{-k}) - L_test(theta_hat) (docs/math.md §6; IS < 0: harmful).
* **Pointwise and non-convex** (where it breaks): a two-layer tanh network on the same images
  pooled to 4 x 4 pixels, same loss and L2 term, started with its units equal so that the fit
  stops at a saddle; leave-one-out by a descent method (saddle-free Newton) that leaves it.
* **Contrastive**: the kit's own synthetic CLIP-style pairs, linear heads and objective
  (:mod:`ecif.core.terms`, :mod:`ecif.core.objective`), compared with leave-one-out retraining
  by :func:`ecif.experiments.retraining.loo_experiment`.

:func:`findings` turns the numbers into the sentences the notebook ends with.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ecif.core import terms
from ecif.core.batching import BatchingProtocol
from ecif.core.fit import fit
from ecif.core.heads import LinearHeads
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs
from ecif.experiments.metrics import loo_agreement
from ecif.experiments.retraining import loo_experiment

__all__ = [
    "Digits", "LogisticFit", "digits_problem", "logistic_loss", "logistic_grad", "logistic_hessian",
    "fit_logistic", "logistic_influence", "logistic_loo", "lam_sweep", "damping_sweep",
    "pooled_digits", "net_loss", "net_jacobian", "net_grad", "net_hessian", "symmetric_start",
    "NetFit", "fit_net", "net_influence", "net_loo", "net_damping_rows", "nonconvex_study",
    "nonconvex_findings",
    "ContrastiveDemo", "contrastive_demo", "pair_roles", "zeta_check", "contrastive_loo",
    "findings", "row", "flipped_among_most_harmful", "check_guess",
]

DT = torch.float64


# ------------------------------------------------------------------- pointwise: logistic


@dataclass
class Digits:
    """Two digit classes: train ``x (n, 65)``, ``y (n,)`` in {-1, +1}; test ``x_test``,
    ``y_test``; ``flipped (n,)`` bool marks train labels that were flipped on purpose."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    flipped: np.ndarray
    classes: tuple[int, int]


def digits_problem(n_train: int = 200, classes: tuple[int, int] = (3, 5), n_flip: int = 10,
                   seed: int = 0) -> Digits:
    """Two classes of the scikit-learn digits (bundled with the library, no download), shuffled
    with ``seed``; the first ``n_train`` images train, the rest test; ``n_flip`` train labels are
    flipped so that some points are harmful."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    feats = digits.data[keep] / 16.0
    feats = np.hstack([feats, np.ones((feats.shape[0], 1))])  # bias column
    labels = np.where(digits.target[keep] == classes[1], 1.0, -1.0)
    order = np.random.default_rng(seed).permutation(len(labels))
    feats, labels = feats[order], labels[order]
    if not 0 < n_train < len(labels):
        raise ValueError(f"n_train must lie in (0, {len(labels)}), got {n_train}.")
    y = labels[:n_train].copy()
    flipped = np.zeros(n_train, dtype=bool)
    flipped[np.random.default_rng(seed + 1).choice(n_train, n_flip, replace=False)] = True
    y[flipped] *= -1
    t = lambda a: torch.as_tensor(a, dtype=DT, device="cpu")  # noqa: E731
    return Digits(t(feats[:n_train]), t(y), t(feats[n_train:]), t(labels[n_train:]), flipped,
                  tuple(classes))


def logistic_loss(theta, x, y, lam: float = 0.0, n: int | None = None, keep=None):
    """``(1/n) sum_{k kept} log(1 + exp(-y_k x_k^T theta)) + (lam/2)||theta||^2``; ``n`` defaults
    to ``len(y)`` and stays the full count when ``keep`` (bool mask) removes points."""
    n = len(y) if n is None else n
    per = torch.nn.functional.softplus(-y * (x @ theta))
    if keep is not None:
        per = per * keep
    return per.sum() / n + 0.5 * lam * (theta @ theta)


def logistic_grad(theta, x, y, lam: float = 0.0, n: int | None = None, keep=None):
    """Closed-form gradient of :func:`logistic_loss`."""
    n = len(y) if n is None else n
    w = -y * torch.sigmoid(-y * (x @ theta))
    if keep is not None:
        w = w * keep
    return x.T @ w / n + lam * theta


def logistic_hessian(theta, x, y, lam: float = 0.0, n: int | None = None, keep=None):
    """Closed-form Hessian of :func:`logistic_loss`: ``(1/n) X^T diag(p (1 - p)) X + lam I``."""
    n = len(y) if n is None else n
    p = torch.sigmoid(x @ theta)
    w = p * (1 - p)
    if keep is not None:
        w = w * keep
    return (x * w[:, None]).T @ x / n + lam * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)


def _newton(theta, x, y, lam, keep=None, gtol=1e-11, max_iter=100):
    """Newton's method with backtracking on the convex logistic objective."""
    for it in range(1, max_iter + 1):
        g = logistic_grad(theta, x, y, lam, keep=keep)
        if float(g.norm()) <= gtol:
            return theta, it - 1, float(g.norm())
        step = torch.linalg.solve(logistic_hessian(theta, x, y, lam, keep=keep), g)
        f0, a = float(logistic_loss(theta, x, y, lam, keep=keep)), 1.0
        while a > 1e-10 and float(logistic_loss(theta - a * step, x, y, lam, keep=keep)) > f0:
            a /= 2
        theta = theta - a * step
    return theta, max_iter, float(logistic_grad(theta, x, y, lam, keep=keep).norm())


def _one_thread(fn):
    """Run ``fn`` on one torch thread: these problems are too small to gain from more, and on a
    busy machine extra threads only wait for each other."""
    def wrapped(*args, **kwargs):
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved)
    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@dataclass
class LogisticFit:
    theta: torch.Tensor
    lam: float
    iterations: int
    grad_norm: float
    min_eig: float  #: smallest eigenvalue of the Hessian at ``theta`` (regulariser included)


@_one_thread
def fit_logistic(data: Digits, lam: float) -> LogisticFit:
    """``theta_hat`` by Newton from 0, in float64, to a gradient norm below 1e-11 (or 100 steps)."""
    theta0 = torch.zeros(data.x.shape[1], dtype=DT, device=data.x.device)
    theta, it, gn = _newton(theta0, data.x, data.y, lam)
    emin = float(torch.linalg.eigvalsh(logistic_hessian(theta, data.x, data.y, lam)).min())
    return LogisticFit(theta, lam, it, gn, emin)


def logistic_influence(data: Digits, res: LogisticFit, damping: float = 0.0) -> np.ndarray:
    """``IS(k) = grad L_test^T (1/n) (H + damping I)^-1 grad l_k`` for every training point."""
    n, th = len(data.y), res.theta
    H = logistic_hessian(th, data.x, data.y, res.lam) + damping * torch.eye(len(th), dtype=DT, device=th.device)
    g_test = logistic_grad(th, data.x_test, data.y_test)  # mean test loss, no regulariser
    h = torch.linalg.solve(H, g_test)
    per_point = data.x * (-data.y * torch.sigmoid(-data.y * (data.x @ th)))[:, None]  # grad l_k
    return (per_point @ h / n).numpy()


def _batched_loo(data: Digits, res: LogisticFit, gtol: float = 1e-9, max_iter: int = 50):
    """``theta_hat_{-k}`` for every ``k`` at once: Newton with backtracking on the ``n`` objectives
    ``L_{-k}`` side by side (row ``k`` of every array is refit ``k``), warm-started at
    ``theta_hat``. Returns the ``(n, d)`` refits and their largest gradient norm."""
    x, y, lam = data.x, data.y, res.lam
    n, d = x.shape
    keep = 1.0 - torch.eye(n, dtype=DT, device=x.device)  # keep[k, j]: refit k keeps example j
    theta = res.theta.expand(n, d).clone()

    def losses(th):
        return (torch.nn.functional.softplus(-(th @ x.T) * y) * keep).sum(1) / n \
            + 0.5 * lam * (th * th).sum(1)

    for _ in range(max_iter):
        z = (theta @ x.T) * y  # (n, n): margins of every example under every refit
        g = ((-y * torch.sigmoid(-z)) * keep) @ x / n + lam * theta
        gnorm = g.norm(dim=1)
        if float(gnorm.max()) <= gtol:
            break
        p = torch.sigmoid(theta @ x.T)
        w = p * (1 - p) * keep
        H = (w[:, :, None] * x).transpose(1, 2) @ x / n + lam * torch.eye(d, dtype=DT, device=x.device)  # (n, d, d)
        step = torch.linalg.solve(H, g.unsqueeze(-1)).squeeze(-1)
        f0, a = losses(theta), torch.ones(n, dtype=DT, device=x.device)
        for _ in range(40):  # halve the step of the refits whose loss went up
            worse = losses(theta - a[:, None] * step) > f0 + 1e-14 * f0.abs()  # round-off
            if not bool(worse.any()):
                break
            a = torch.where(worse, a / 2, a)
        theta = theta - a[:, None] * step
    z = (theta @ x.T) * y
    g = ((-y * torch.sigmoid(-z)) * keep) @ x / n + lam * theta
    return theta, float(g.norm(dim=1).max())


@_one_thread
def logistic_loo(data: Digits, res: LogisticFit, damping: float = 0.0) -> dict:
    """Exact leave-one-out for every training point (Newton, warm start at ``theta_hat``, all
    refits side by side) against the influence estimate. Returns ``predicted``, ``actual``
    (test-loss changes), ``flipped``, ``pearson``, ``spearman``, ``slope`` (least squares of
    predicted on actual), ``max_grad_norm`` of the refits."""
    base = float(logistic_loss(res.theta, data.x_test, data.y_test))
    thetas, worst = _batched_loo(data, res)
    test = torch.nn.functional.softplus(-(thetas @ data.x_test.T) * data.y_test).mean(1)
    actual = (test - base).numpy()
    pred = logistic_influence(data, res, damping)
    agree = loo_agreement(pred, actual)
    slope = float(pred @ actual / (actual @ actual))
    return {"predicted": pred, "actual": actual, "flipped": data.flipped.copy(),
            "pearson": agree["pearson"], "spearman": agree["spearman"], "slope": slope,
            "max_grad_norm": worst}


def lam_sweep(data: Digits, lams) -> list[dict]:
    """Agreement with exact leave-one-out as the regularisation ``lam`` shrinks: per ``lam`` the
    Pearson, Spearman, slope, smallest Hessian eigenvalue and ``||theta_hat||``."""
    rows = []
    for lam in lams:
        res = fit_logistic(data, lam)
        out = logistic_loo(data, res)
        rows.append({"lam": float(lam), "pearson": out["pearson"], "spearman": out["spearman"],
                     "slope": out["slope"], "min_eig": res.min_eig,
                     "theta_norm": float(res.theta.norm()), "grad_norm": res.grad_norm})
    return rows


def damping_sweep(data: Digits, lam: float, dampings) -> list[dict]:
    """At one fit (regularisation ``lam``), the estimate with ``H + mu I`` for each damping ``mu``:
    agreement with the same exact leave-one-out (computed once). Rows: ``lam``, ``damping``,
    ``pearson``, ``spearman``, ``slope``."""
    res = fit_logistic(data, lam)
    base = logistic_loo(data, res)
    rows = []
    for mu in dampings:
        pred = logistic_influence(data, res, mu)
        agree = loo_agreement(pred, base["actual"])
        rows.append({"lam": float(lam), "damping": float(mu), "pearson": agree["pearson"],
                     "spearman": agree["spearman"],
                     "slope": float(pred @ base["actual"] / (base["actual"] @ base["actual"]))})
    return rows


# ------------------------------------------------------- where it breaks: a non-convex model
#
# A two-layer network with h tanh units on the digits pooled to 4 x 4 pixels plus the bias
# (d = 17 inputs), output f(x) = sum_j a_j tanh(w_j^T x), the same logistic loss and L2 term:
#
#     L(theta) = (1/n) sum_k softplus(-y_k f(x_k)) + (lam/2) ||theta||^2,   theta = (W, a),
#
# with theta packed as ``W.reshape(h * d)`` followed by ``a`` (P = h d + h parameters). The loss
# is not convex in theta. Started with every unit equal (:func:`symmetric_start`) the units stay
# equal under any method that treats them alike, and the fit stops where the gradient vanishes
# inside that symmetric set: a stationary point that can be a saddle of the full problem.


def pooled_digits(data: Digits) -> Digits:
    """The same images, each 2 x 2 block of the 8 x 8 pixels averaged: ``x (n, 17)`` (16 pooled
    pixels in [0, 1] and the bias column); labels, test split and flips unchanged."""
    def pool(x):  # (m, 65) -> (m, 17)
        px = x[:, :64].reshape(-1, 4, 2, 4, 2).mean(dim=(2, 4)).reshape(-1, 16)
        return torch.cat([px, x[:, 64:]], dim=1)
    return Digits(pool(data.x), data.y, pool(data.x_test), data.y_test, data.flipped.copy(),
                  data.classes)


def _net_parts(theta, x, hidden):
    """Batched network pieces for ``theta (m, P)`` on ``x (n, d)``: ``W (m, h, d)``, ``a (m, h)``,
    ``t = tanh(x W^T) (m, n, h)`` and ``f (m, n)``."""
    m, d = theta.shape[0], x.shape[1]
    W = theta[:, : hidden * d].reshape(m, hidden, d)
    a = theta[:, hidden * d:]
    t = torch.tanh(torch.einsum("nd,mhd->mnh", x, W))
    return W, a, t, torch.einsum("mnh,mh->mn", t, a)


def net_loss(theta, x, y, lam: float = 0.0, hidden: int = 2, keep=None):
    """``(m,)`` objectives of ``theta (m, P)``: ``(1/n) sum_{k kept} softplus(-y_k f(x_k)) +
    (lam/2)||theta||^2``; ``keep (m, n)`` (0/1) removes examples per row, ``n = len(y)`` stays."""
    per = torch.nn.functional.softplus(-y * _net_parts(theta, x, hidden)[3])
    if keep is not None:
        per = per * keep
    return per.sum(1) / len(y) + 0.5 * lam * (theta * theta).sum(1)


def net_jacobian(theta, x, hidden: int = 2):
    """``df/dtheta (m, n, P)``: ``a_j (1 - t_j^2) x`` for ``w_j``, ``t_j`` for ``a_j``."""
    W, a, t, _ = _net_parts(theta, x, hidden)
    m, n = t.shape[:2]
    jw = (a[:, None, :] * (1 - t * t))[..., None] * x[None, :, None, :]  # (m, n, h, d)
    return torch.cat([jw.reshape(m, n, -1), t], dim=2)


def net_grad(theta, x, y, lam: float = 0.0, hidden: int = 2, keep=None):
    """Closed-form gradient ``(m, P)`` of :func:`net_loss`."""
    f = _net_parts(theta, x, hidden)[3]
    r = -y * torch.sigmoid(-y * f) / len(y)  # d(loss_k / n)/df_k, (m, n)
    if keep is not None:
        r = r * keep
    return torch.einsum("mn,mnp->mp", r, net_jacobian(theta, x, hidden)) + lam * theta


def net_hessian(theta, x, y, lam: float = 0.0, hidden: int = 2, keep=None):
    """Closed-form Hessian ``(m, P, P)`` of :func:`net_loss`: the Gauss-Newton part
    ``(1/n) sum c_k J_k J_k^T`` (``c = sigma(yf) sigma(-yf) >= 0``) plus the part that makes it
    indefinite, ``(1/n) sum r_k d^2 f_k`` (``r = dl/df``, either sign), plus ``lam I``."""
    W, a, t, f = _net_parts(theta, x, hidden)
    m, n, h = t.shape
    d = x.shape[1]
    c = torch.sigmoid(y * f) * torch.sigmoid(-y * f) / n
    r = -y * torch.sigmoid(-y * f) / n
    if keep is not None:
        c, r = c * keep, r * keep
    J = net_jacobian(theta, x, hidden)
    H = torch.einsum("mn,mnp,mnq->mpq", c, J, J)
    s = 1 - t * t
    ww = torch.einsum("mnj,nd,ne->mjde", r[..., None] * a[:, None, :] * (-2 * t * s), x, x)  # (m, h, d, d)
    wa = torch.einsum("mnj,nd->mjd", r[..., None] * s, x)  # d2f / dw_j da_j, (m, h, d)
    for j in range(h):
        w = slice(j * d, (j + 1) * d)
        H[:, w, w] += ww[:, j]
        H[:, w, h * d + j] += wa[:, j]
        H[:, h * d + j, w] += wa[:, j]
    return H + lam * torch.eye(H.shape[1], dtype=H.dtype, device=H.device)


def symmetric_start(d: int, hidden: int = 2, seed: int = 0, scale: float = 0.1):
    """``theta_0 (P,)`` with every unit equal: one random ``w`` (normal, ``scale``) copied into
    each row of ``W``, and ``a_j = 1``."""
    w = scale * torch.randn(d, generator=torch.Generator(device="cpu").manual_seed(seed), dtype=DT, device="cpu")
    return torch.cat([w.repeat(hidden), torch.ones(hidden, dtype=DT, device="cpu")])


def _descend(theta, x, y, lam, hidden, keep, gtol=1e-10, max_iter=300):
    """Saddle-free Newton on ``m`` objectives side by side: step ``-V |Lambda|^-1 V^T g`` (the
    Hessian's eigenvalues by absolute value, floored at 1e-8), halved until the loss falls
    (Armijo). A descent method: near a saddle it moves downhill, never towards it. Returns
    ``theta (m, P)``, each row's final gradient norm, the steps taken."""
    f = lambda th: net_loss(th, x, y, lam, hidden, keep)  # noqa: E731
    for it in range(max_iter):
        g = net_grad(theta, x, y, lam, hidden, keep)
        gn = g.norm(dim=1)
        todo = gn > gtol
        if not bool(todo.any()):
            break
        ev, V = torch.linalg.eigh(net_hessian(theta, x, y, lam, hidden, keep))
        step = V @ ((V.transpose(1, 2) @ g[..., None]).squeeze(-1) / ev.abs().clamp_min(1e-8))[..., None]
        step = step.squeeze(-1) * todo[:, None]
        f0, slope, a = f(theta), (g * step).sum(1), torch.ones(len(theta), dtype=DT, device=theta.device)
        for _ in range(60):
            worse = (f(theta - a[:, None] * step) > f0 - 1e-4 * a * slope + 1e-15 * f0.abs()) & todo
            if not bool(worse.any()):
                break
            a = torch.where(worse, a / 2, a)
        theta = theta - a[:, None] * step
    return theta, net_grad(theta, x, y, lam, hidden, keep).norm(dim=1), it


@dataclass
class NetFit:
    theta: torch.Tensor  #: ``(P,)``
    lam: float
    hidden: int
    iterations: int
    grad_norm: float
    eigenvalues: torch.Tensor  #: of the Hessian at ``theta`` (regulariser included), ascending
    unit_gap: float  #: ``max_j ||w_j - w_1||``: 0 while the units are still equal

    @property
    def min_eig(self) -> float:
        return float(self.eigenvalues[0])


@_one_thread
def fit_net(data: Digits, lam: float, hidden: int = 2, seed: int = 0) -> NetFit:
    """``theta_hat`` from :func:`symmetric_start` by :func:`_descend` to a gradient norm of 1e-10
    (``data`` as given: pass :func:`pooled_digits`)."""
    x, y = data.x, data.y
    th, gn, it = _descend(symmetric_start(x.shape[1], hidden, seed)[None], x, y, lam, hidden, None)
    ev = torch.linalg.eigvalsh(net_hessian(th, x, y, lam, hidden)[0])
    W = th[0, : hidden * x.shape[1]].reshape(hidden, -1)
    return NetFit(th[0], lam, hidden, it, float(gn[0]), ev, float((W - W[0]).norm(dim=1).max()))


def net_influence(data: Digits, res: NetFit, damping: float = 0.0) -> np.ndarray:
    """``IS(k) = grad L_test^T (1/n) (H + damping I)^-1 grad l_k`` at ``res.theta``, ``(n,)``,
    the formula of section 2 used as is (``H`` may be indefinite: nothing checks it here)."""
    th, n = res.theta[None], len(data.y)
    P = th.shape[1]
    H = net_hessian(th, data.x, data.y, res.lam, res.hidden)[0] + damping * torch.eye(P, dtype=DT, device=th.device)
    g_test = net_grad(th, data.x_test, data.y_test, 0.0, res.hidden)[0]  # mean test loss
    f = _net_parts(th, data.x, res.hidden)[3][0]
    per_point = (-data.y * torch.sigmoid(-data.y * f))[:, None] * net_jacobian(th, data.x, res.hidden)[0]
    return (per_point @ torch.linalg.solve(H, g_test) / n).numpy()


@_one_thread
def net_loo(data: Digits, res: NetFit, nudge: float = 1e-3) -> dict:
    """Leave-one-out by descent for every training point, all refits side by side: each starts at
    ``theta_hat`` moved by ``nudge`` along the Hessian's lowest eigenvector ``v`` (sign fixed: its
    largest entry positive; this breaks a tie between the units, as any random start would) and
    runs :func:`_descend` on ``L_{-k}`` to a gradient norm of 1e-9. Row ``n`` is the same refit
    on all the data. Returns ``actual`` (``(n,)``: ``L_test(theta_{-k}) - L_test(theta_hat)``),
    ``escape`` (the all-data refit's test-loss change: what leaving ``theta_hat`` alone does),
    ``max_grad_norm`` over the refits and ``min_eig_refits``, the smallest Hessian eigenvalue
    over them (> 0: every refit ended at a strict local minimum)."""
    x, y, n = data.x, data.y, len(data.y)
    v = torch.linalg.eigh(net_hessian(res.theta[None], x, y, res.lam, res.hidden)[0])[1][:, 0]
    v = v * torch.sign(v[v.abs().argmax()])
    keep = torch.cat([1.0 - torch.eye(n, dtype=DT, device=data.x.device), torch.ones(1, n, dtype=DT, device=data.x.device)])
    start = (res.theta + nudge * v).expand(n + 1, -1).clone()
    thetas, gn, _ = _descend(start, x, y, res.lam, res.hidden, keep, gtol=1e-9)
    test = net_loss(torch.cat([thetas, res.theta[None]]), data.x_test, data.y_test, 0.0, res.hidden)
    change = (test[:-1] - test[-1]).numpy()
    min_eig = float(torch.linalg.eigvalsh(net_hessian(thetas, x, y, res.lam, res.hidden, keep))[:, 0].min())
    return {"actual": change[:n], "escape": float(change[n]), "max_grad_norm": float(gn.max()),
            "min_eig_refits": min_eig, "flipped": data.flipped.copy()}


def net_damping_rows(data: Digits, res: NetFit, loo: dict, dampings) -> list[dict]:
    """Per damping ``mu``: the smallest eigenvalue of ``H + mu I``, and the estimate's
    ``pearson``, ``spearman``, ``slope`` against ``loo["actual"]`` (:func:`net_loo`)."""
    a = np.asarray(loo["actual"])
    rows = []
    for mu in dampings:
        pred = net_influence(data, res, mu)
        agree = loo_agreement(pred, a)
        rows.append({"lam": res.lam, "damping": float(mu), "min_eig": res.min_eig + float(mu),
                     "pearson": agree["pearson"], "spearman": agree["spearman"],
                     "slope": float(pred @ a / (a @ a))})
    return rows


def nonconvex_study(data: Digits, lams=(1e-3, 3e-3, 1e-2, 3e-2), dampings=(0.0, 1e-2, 1e-1),
                    hidden: int = 2, seed: int = 0) -> dict:
    """Section 4b of notebook 00 on ``data`` (pooled by :func:`pooled_digits` here).

    For every ``lam``: :func:`fit_net`, :func:`net_loo` and the undamped estimate; ``lam_rows``
    holds ``lam``, ``grad_norm`` and ``iterations`` of the fit, ``unit_gap``, ``min_eig``,
    ``max_grad_norm`` and ``min_eig_refits`` of the refits, ``escape``, ``pearson``,
    ``spearman``, ``slope`` (through the origin), ``mean_actual``, ``mean_estimate``. At the first ``lam``: :func:`net_damping_rows` for ``dampings``
    plus ``mu_pd = 1.5 |min_eig|`` when the Hessian there is indefinite (the smallest damping
    that makes ``H + mu I`` positive definite, with margin). ``scatter``: ``{lam: (predicted,
    actual)}`` for the first ``lam`` and the first one whose Hessian is positive definite."""
    data = pooled_digits(data)
    rows, scatter, first = [], {}, None
    for lam in lams:
        res = fit_net(data, float(lam), hidden, seed)
        loo = net_loo(data, res)
        pred = net_influence(data, res)
        agree = loo_agreement(pred, loo["actual"])
        a = loo["actual"]
        rows.append({"lam": float(lam), "grad_norm": res.grad_norm, "iterations": res.iterations,
                     "unit_gap": res.unit_gap, "min_eig": res.min_eig,
                     "max_grad_norm": loo["max_grad_norm"], "min_eig_refits": loo["min_eig_refits"],
                     "escape": loo["escape"], "pearson": agree["pearson"],
                     "spearman": agree["spearman"], "slope": float(pred @ a / (a @ a)),
                     "mean_actual": float(a.mean()), "mean_estimate": float(pred.mean())})
        if first is None:
            first = (res, loo)
            scatter[float(lam)] = (pred, a)
        elif res.min_eig > 0 and len(scatter) == 1 and rows[0]["min_eig"] <= 0:
            scatter[float(lam)] = (pred, a)
    res, loo = first
    mus = sorted(set(float(m) for m in dampings) | ({1.5 * -res.min_eig} if res.min_eig <= 0 else set()))
    return {"lam_rows": rows, "damping_rows": net_damping_rows(data, res, loo, mus),
            "mu_pd": 1.5 * -res.min_eig if res.min_eig <= 0 else 0.0, "scatter": scatter,
            "n_params": int(res.theta.numel()), "hidden": hidden}


def nonconvex_findings(study: dict, convex_pearson: float | None = None) -> list[str]:
    """Sentences about :func:`nonconvex_study`'s numbers: the first fit's kind of stationary
    point and agreement, what the smallest positive-definite damping does to it, and the first
    ``lam`` (the L2 pull) whose fit is a strict minimum."""
    r0 = study["lam_rows"][0]
    conv = f", against {convex_pearson:.4f} on the convex toy" if convex_pearson is not None else ""
    kind = ("a saddle: the Hessian's smallest eigenvalue is" if r0["min_eig"] < 0
            else "a strict minimum: the Hessian's smallest eigenvalue is")
    out = [f"Non-convex network (lam = {r0['lam']:g}): the fit stopped with gradient norm "
           f"{r0['grad_norm']:.1e} and its units {'still equal' if r0['unit_gap'] < 1e-6 else 'apart'} "
           f"(gap {r0['unit_gap']:.1e}), at {kind} {r0['min_eig']:.2e}. Against leave-one-out by "
           f"descent (every refit at a strict minimum, gradient norm <= {r0['max_grad_norm']:.1e}) "
           f"the estimate's Pearson is {r0['pearson']:.3f} (slope {r0['slope']:.3f}){conv}."]
    if r0["min_eig"] < 0:
        out.append(f"Why: every refit leaves the saddle downhill. Leaving it alone (the refit on all the "
                   f"data) changes the test loss by {r0['escape']:+.4f}, and the refits change it by "
                   f"{r0['mean_actual']:+.4f} on average; the estimates average {r0['mean_estimate']:+.4f}. "
                   f"They describe the stationary point, not where retraining goes.")
    if study["mu_pd"] > 0:
        d0 = next(r for r in study["damping_rows"] if r["damping"] == 0.0) if any(
            r["damping"] == 0.0 for r in study["damping_rows"]) else None
        dp = next(r for r in study["damping_rows"] if math.isclose(r["damping"], study["mu_pd"]))
        base = f" from {d0['pearson']:.3f}" if d0 else ""
        verb = "falls" if d0 and dp["pearson"] < d0["pearson"] else "moves"
        out.append(f"Damping with mu = {dp['damping']:.2e} makes H + mu I positive definite (smallest "
                   f"eigenvalue {dp['min_eig']:.2e}), and the Pearson {verb}{base} to {dp['pearson']:.3f}: "
                   f"damping makes the solve legal, it does not bring the refits back.")
    pd_rows = [r for r in study["lam_rows"] if r["min_eig"] > 0]
    if r0["min_eig"] <= 0 and pd_rows:
        r = pd_rows[0]
        out.append(f"A stronger L2 pull turns the same symmetric fit into a strict minimum: at lam = "
                   f"{r['lam']:g} the smallest eigenvalue is {r['min_eig']:.2e} and the Pearson "
                   f"{r['pearson']:.3f} (slope {r['slope']:.3f}), at the price of a more constrained model.")
    elif r0["min_eig"] <= 0:
        out.append("None of the lam values tried made the fit a strict minimum.")
    return out


# ------------------------------------------------------------------------ contrastive


@dataclass
class ContrastiveDemo:
    data: object  #: :class:`ecif.data.synthetic.SyntheticPairs`
    objective: ContrastiveObjective
    val_objective: ContrastiveObjective
    theta: torch.Tensor


@_one_thread
def contrastive_demo(n: int = 200, batch_size: int = 50, lam: float = 0.2, dim: int = 4,
                     shuffle_rate: float = 0.15, seed: int = 0) -> ContrastiveDemo:
    """A tiny CLIP-style problem: synthetic features, linear heads, symmetric InfoNCE over fixed
    batches (docs/math.md §1-§2), fitted by the kit's Newton fit to a gradient norm of 1e-10."""
    d = synthetic_pairs(n, n_val=150, d_img=dim, d_txt=dim, width=dim, shuffle_rate=shuffle_rate,
                        seed=seed)
    param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(n, batch_size, seed),
                               lam=lam)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(150, 50, seed + 1))
    res = fit(obj, gtol=1e-10)
    if not res.converged:
        raise RuntimeError(f"the demo fit did not converge: {res.summary()}")
    return ContrastiveDemo(d, obj, val, res.theta)


def pair_roles(demo: ContrastiveDemo, batch: int = 0, size: int = 8) -> dict:
    """The first ``size`` slots of one batch at ``theta_hat``: similarities ``S``, row softmax
    ``P``, column softmax ``Q`` (:func:`ecif.core.terms.softmaxes`), the per-slot ``pos``,
    ``neg``, ``negexact`` (:func:`ecif.core.terms.slot_terms`), the pair indices and which are
    misaligned. The terms are those of the whole batch, the matrices the shown corner."""
    obj = demo.objective
    with torch.no_grad():
        S = obj.similarity(demo.theta)[batch: batch + 1]
    m = obj.masks.select(slice(batch, batch + 1))
    P, Q = terms.softmaxes(S, m)
    slot = terms.slot_terms(S, m)
    pairs = obj.index[batch, :size].numpy()
    cut = lambda a: a[0, :size, :size].numpy()  # noqa: E731
    return {"S": cut(S), "P": cut(P), "Q": cut(Q), "pairs": pairs,
            "misaligned": demo.data.misaligned[pairs],
            **{name: v[0, :size].numpy() for name, v in slot.items()}}


def zeta_check(demo: ContrastiveDemo, slot: int = 0, batch: int = 0, eps: float = 1e-6) -> dict:
    """The zeta device of docs/math.md §4 on one batch, with the kit's terms.

    Adds ``log zeta`` to row and column ``slot`` of ``S`` (the diagonal entry once) and returns
    ``d_dzeta`` (central difference of the batch loss at ``zeta = 1``), ``neg`` (``Neg_k`` from
    :func:`ecif.core.terms.neg`, which it should equal), ``removal`` (the other pairs' loss with
    ``k`` present minus with ``k`` deleted) and ``negexact`` (``NegExact_k``, which it should
    equal), and ``pos`` (``Pos_k``, unchanged by ``zeta``)."""
    obj = demo.objective
    with torch.no_grad():
        S = obj.similarity(demo.theta)[batch: batch + 1]
    m = obj.masks.select(slice(batch, batch + 1))

    def batch_loss(zeta: float) -> float:
        add = torch.zeros_like(S)
        add[0, slot, :] += math.log(zeta)
        add[0, :, slot] += math.log(zeta)
        add[0, slot, slot] -= math.log(zeta)  # the diagonal entry once
        return float(terms.pos(S + add, m).sum())

    d_dzeta = (batch_loss(1 + eps) - batch_loss(1 - eps)) / (2 * eps)
    keep = m.keep.clone()
    keep[0, slot] = False
    others_with = float(terms.pos(S, m).sum() - terms.pos(S, m)[0, slot])
    others_without = float(terms.pos(S, terms.masks(keep)).sum())
    slot_terms = terms.slot_terms(S, m)
    return {"d_dzeta": d_dzeta, "neg": float(slot_terms["neg"][0, slot]),
            "removal": others_with - others_without,
            "negexact": float(slot_terms["negexact"][0, slot]),
            "pos": float(slot_terms["pos"][0, slot])}


@_one_thread
def contrastive_loo(demo: ContrastiveDemo, n_clean: int = 14, n_misaligned: int = 6) -> dict:
    """ECIF, positive-only, negative-only and newton against leave-one-out retraining
    (:func:`~ecif.experiments.retraining.loo_experiment`) on the first ``n_clean`` clean and
    ``n_misaligned`` misaligned pairs. Returns ``table`` (DataFrame) and ``pearson``:
    ``{group: {variant: r}}`` for groups ``all``, ``clean``, ``misaligned``."""
    mask = demo.data.misaligned
    idx = np.r_[np.flatnonzero(mask)[:n_misaligned], np.flatnonzero(~mask)[:n_clean]]
    with warnings.catch_warnings():
        # torch's own deprecation notice, raised inside torch.func; the kit's warnings still show
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        table, _ = loo_experiment(demo.objective, demo.val_objective, demo.theta, np.sort(idx),
                                  mask=mask)
    mis = table["misaligned"].to_numpy()
    groups = {"all": np.ones(len(table), bool), "clean": ~mis, "misaligned": mis}
    pearson = {g: {v: loo_agreement(table[v].to_numpy()[sel], table["actual"].to_numpy()[sel])["pearson"]
                   for v in terms.VARIANTS} for g, sel in groups.items()}
    return {"table": table, "pearson": pearson, "converged": bool(table["converged"].all())}


# --------------------------------------------------------------------------- findings


def findings(toy: dict, lam_rows: list[dict], damping_rows: list[dict], zeta: dict,
             contrastive: dict, nonconvex: dict | None = None) -> list[str]:
    """The notebook's closing sentences, each computed from the numbers passed in.

    ``toy``: :func:`logistic_loo` (``pearson``, ``slope``); ``lam_rows``: :func:`lam_sweep`;
    ``damping_rows``: :func:`damping_sweep`; ``zeta``: :func:`zeta_check`; ``contrastive``:
    the ``pearson`` dict of :func:`contrastive_loo`; ``nonconvex``: :func:`nonconvex_study`,
    whose sentences (:func:`nonconvex_findings`) follow the damping sentence."""
    out = []
    verdict = "agrees almost exactly with" if toy["pearson"] >= 0.99 else "only roughly follows"
    out.append(f"Convex toy: the first-order estimate {verdict} exact leave-one-out "
               f"(Pearson {toy['pearson']:.4f}, slope {toy['slope']:.3f}).")
    best = max(lam_rows, key=lambda r: r["pearson"])
    worst = min(lam_rows, key=lambda r: r["pearson"])
    if worst["lam"] < best["lam"]:
        out.append(f"Weak regularisation breaks it: at lam = {worst['lam']:g} the Pearson falls to "
                   f"{worst['pearson']:.3f} (smallest Hessian eigenvalue {worst['min_eig']:.2e}), "
                   f"against {best['pearson']:.3f} at lam = {best['lam']:g}.")
    else:
        out.append(f"Over the lam values tried the Pearson stays between {worst['pearson']:.3f} "
                   f"and {best['pearson']:.3f}: this toy did not break.")
    lo = min(damping_rows, key=lambda r: r["damping"])
    hi = max(damping_rows, key=lambda r: r["damping"])
    out.append(f"Damping shrinks the estimate: its slope against the truth goes from "
               f"{lo['slope']:.3f} (mu = {lo['damping']:g}) to {hi['slope']:.3f} (mu = "
               f"{hi['damping']:g}), and the Pearson from {lo['pearson']:.3f} to {hi['pearson']:.3f}.")
    if nonconvex is not None:
        out.extend(nonconvex_findings(nonconvex, toy["pearson"]))
    out.append(f"The zeta device: dL/dzeta at zeta = 1 is {zeta['d_dzeta']:.6f} and Neg_k is "
               f"{zeta['neg']:.6f}; deleting the pair changes the others' loss by "
               f"{zeta['removal']:.6f}, which is NegExact_k = {zeta['negexact']:.6f}.")
    clean = contrastive["clean"]
    gap = clean["ecif"] - clean["positive"]
    if gap > 0.02:
        out.append(f"On clean pairs the positive-only estimate misses: Pearson {clean['positive']:.3f} "
                   f"against {clean['ecif']:.3f} for ECIF, because a clean pair's negative role is a "
                   f"large part of what its removal does.")
    else:
        out.append(f"On clean pairs positive-only ({clean['positive']:.3f}) and ECIF "
                   f"({clean['ecif']:.3f}) agree about equally well with retraining here.")
    mis = contrastive["misaligned"]
    if min(mis["positive"], mis["ecif"]) >= 0.9:
        out.append(f"On misaligned pairs both follow retraining (positive-only {mis['positive']:.3f}, "
                   f"ECIF {mis['ecif']:.3f}): their own mismatched terms dominate the effect.")
    else:
        out.append(f"On misaligned pairs the Pearson is {mis['positive']:.3f} for positive-only and "
                   f"{mis['ecif']:.3f} for ECIF.")
    return out


# -------------------------------------------------------------------------- exercises


def row(rows: list[dict], key: str, value: float) -> dict:
    """The row of a sweep (:func:`lam_sweep`, :func:`damping_sweep`) whose ``key`` equals
    ``value`` (relative tolerance 1e-9)."""
    for r in rows:
        if math.isclose(r[key], value, rel_tol=1e-9, abs_tol=0.0) or r[key] == value:
            return r
    raise KeyError(f"no row with {key} = {value:g} (have {[r[key] for r in rows]})")


def flipped_among_most_harmful(loo: dict, top: int = 10) -> int:
    """How many flipped labels are among the ``top`` examples with the most negative estimate."""
    order = np.argsort(np.asarray(loo["predicted"]), kind="stable")[:top]
    return int(np.asarray(loo["flipped"], bool)[order].sum())


def check_guess(guess, truth) -> str:
    """The check cell of an exercise: compares the learner's ``guess`` with the computed
    ``truth`` (numbers within 1e-9, anything else by equality)."""
    if guess is None:
        return "Set your guess first (replace None), then run this cell again."
    if isinstance(truth, tuple):
        truth = tuple(bool(t) if isinstance(t, (bool, np.bool_)) else t for t in truth)
    elif isinstance(truth, np.bool_):
        truth = bool(truth)
    if isinstance(truth, (float, np.floating)) and isinstance(guess, (int, float)):
        right = math.isclose(float(guess), float(truth), rel_tol=1e-9, abs_tol=1e-12)
    else:
        right = guess == truth
    verdict = "Right" if right else "Not this time"
    return f"{verdict}: you said {guess!r}, the notebook computed {truth!r}."
