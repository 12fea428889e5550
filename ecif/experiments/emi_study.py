"""The EMI study (issue 15): EMI/EMID of a dual encoder under test-time shifts and misalignment.

The mapping of the paper's quantities to a CLIP-style dual encoder (stated in ``11_emi``):

* **Inputs.** Item ``i`` of a set is an image; the text the model reads is the set's *caption
  bank* (the captions of all its items, possibly text-shifted). The per-item input ``X`` of the
  MI terms is the image embedding; the bank enters the bound's text-input term.
* **Response.** The model's response to image ``i`` is the caption it retrieves from the bank
  (highest cosine of the model's own image and text embeddings), read as its meaning: the clean
  caption of the retrieved entry. The reference response ``Y`` is the pair's own clean caption.
  So ``Y_hat = Y`` exactly when retrieval is right (duplicates count as right).
* **Embeddings for the estimators** come from a frozen *reference embedder*: the reference
  encoder trained on the clean pretrain split, with its base projections ``W_img``, ``W_txt``
  (never the fine-tuned adapters of the model under test), rows L2-normalised.
* **Block mode** (``finetune.mode: blocks``): the model under test has adapters inside the last
  transformer blocks, so its embeddings are not a projection of the frozen pooled features; the
  fitted adapters are merged into a copy of the backbone
  (:func:`ecif.experiments.block_merge.merge_block_lora`) and that model encodes the set's raw
  images and bank captions (:func:`response_model`).

:class:`SetView` holds one encoded set; :func:`evaluate` gives a model's EMI on it;
:func:`shift_scenario` the EMID and bound between the clean set and a shifted one;
:func:`bootstrap_correlation` and :func:`correlation_table` summarise a grid;
:func:`removal_refits`, :func:`marginal_check` and :func:`relabelling_check` serve the
misalignment experiment. Everything returns plain dicts / DataFrames; no files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ecif.core.blocks import BlockLoRA
from ecif.data import shifts
from ecif.data.pairs import Split
from ecif.data.features import image_features, projection_matrix, text_features
from ecif.experiments import emi as E

__all__ = [
    "Embedder", "SetView", "encode_set", "respond", "response_model", "fit_reference_estimator", "evaluate", "shift_scenario", "scenario_grid",
    "run_shift_grid", "bootstrap_correlation", "correlation_table", "removal_sets", "removal_refits",
    "marginal_check", "relabelling_check",
]


def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)


@dataclass
class Embedder:
    """The frozen backbone (open_clip model + tokenizer) and the reference embeddings.

    ``image_features`` / ``text_features`` are the pre-projection features the LoRA heads of a
    model under test take. ``embed_images`` / ``embed_texts`` are what the estimators see:

    * ``mode="fixed"`` (default): features that no training in this kit touched: images
      average-pooled to ``pool x pool`` pixels per channel (centred on the grey level 128),
      texts the pretrained MiniLM sentence embedding (the text tower's pooled output, before any
      trained projection);
    * ``mode="reference"``: the reference encoder's base embeddings (features times its own
      final projections ``W_img``, ``W_txt``), i.e. the frozen encoder trained on the clean
      pretrain split, without the adapters of any model under test. It shares the image
      backbone with the model under test, so errors caused by a visual shift look consistent
      to it.

    Rows are L2-normalised."""

    model: object
    tokenizer: object
    mode: str = "fixed"
    pool: int = 4

    def __post_init__(self):
        if self.mode not in ("fixed", "reference"):
            raise ValueError(f"mode must be 'fixed' or 'reference', got {self.mode!r}")
        self.W_img = projection_matrix(self.model, "image").astype(np.float64)
        self.W_txt = projection_matrix(self.model, "text").astype(np.float64)
        self._text_cache: dict[str, np.ndarray] = {}

    def image_features(self, images: np.ndarray) -> np.ndarray:
        return image_features(self.model, images, progress=False).astype(np.float64)

    def text_features(self, captions: list[str]) -> np.ndarray:
        new = sorted({c for c in captions if c not in self._text_cache})
        if new:
            for c, f in zip(new, text_features(self.model, self.tokenizer, new, progress=False)):
                self._text_cache[c] = f.astype(np.float64)
        return np.stack([self._text_cache[c] for c in captions])

    def embed_images(self, images: np.ndarray, x_feat: np.ndarray) -> np.ndarray:
        if self.mode == "reference":
            return _norm(x_feat @ self.W_img.T)
        img = np.asarray(images, dtype=np.float64)
        if img.ndim == 3:
            img = img[..., None]
        n, h, w, c = img.shape
        p = self.pool
        pooled = img[:, : h - h % p, : w - w % p].reshape(n, p, h // p, p, w // p, c).mean(axis=(2, 4))
        return _norm(pooled.reshape(n, -1) - 128.0)

    def embed_texts(self, y_feat: np.ndarray) -> np.ndarray:
        return _norm(y_feat @ self.W_txt.T) if self.mode == "reference" else _norm(y_feat)


@dataclass
class SetView:
    """One encoded set of ``n`` items: model inputs ``x_feat (n, d_img)``, ``bank_feat (n,
    d_txt)`` (the captions as read), reference embeddings ``z_v`` (images), ``z_t`` (bank
    captions), ``z_y`` (clean captions), the clean captions and the items' attribute codes;
    ``images`` and ``bank`` are the raw inputs (uint8 images, bank captions) a block-mode model
    under test encodes itself (:func:`response_model`; ``None`` in views built by hand)."""

    x_feat: np.ndarray
    bank_feat: np.ndarray
    z_v: np.ndarray
    z_t: np.ndarray
    z_y: np.ndarray
    clean: list[str]
    attributes: dict
    images: np.ndarray | None = None
    bank: list[str] | None = None

    def __len__(self) -> int:
        return len(self.clean)


def encode_set(embedder: Embedder, split: Split, clean: list[str] | None = None) -> SetView:
    """Encode ``split`` (possibly shifted); ``clean`` are the reference captions (default: the
    split's captions re-rendered from its attributes by its spec)."""
    clean = list(clean) if clean is not None else split.spec.render(split.attributes)
    x = embedder.image_features(split.images)
    bank = embedder.text_features(list(split.captions))
    y = embedder.text_features(clean)
    return SetView(x, bank, embedder.embed_images(split.images, x), embedder.embed_texts(bank), embedder.embed_texts(y),
                   clean, {k: np.asarray(v) for k, v in split.attributes.items()}, images=np.asarray(split.images),
                   bank=list(split.captions))


def response_model(param, theta: torch.Tensor, embedder: Embedder | None = None, centring=None):
    """The model under test ``(param, theta)`` as a function ``view -> (u, w)``: the
    L2-normalised embeddings ``u (n, e)`` of the view's images and ``w (n, e)`` of its bank
    captions, float64.

    Head mode (:class:`~ecif.core.heads.LoRAHeads`): ``u = (x_feat - mu_img) W_img(theta)^T``,
    ``w = (bank_feat - mu_txt) W_txt(theta)^T``; ``centring`` is the ``(mu_img, mu_txt)`` the
    model's frozen map subtracts (``Problem.centring``, docs/math.md §13), ``None`` for none.
    Block mode (:class:`~ecif.core.blocks.BlockLoRA`): ``theta`` is merged once into a copy of
    ``embedder.model`` (:func:`ecif.experiments.block_merge.merge_block_lora`, the backbone the
    block features were extracted from), whose pre-projection features of ``view.images`` and
    ``view.bank`` times its merged final projections give ``u`` and ``w`` (what
    ``BlockLoRA.encode_images``/``encode_texts`` compute on the block rows of the same inputs, to
    float32 rounding). Raises ``ValueError`` when a block-mode model gets no ``embedder`` or
    ``centring``, or a view without raw inputs."""
    if not isinstance(param, BlockLoRA):
        with torch.no_grad():
            wi = param.image_projection(theta).detach().cpu().numpy()
            wt = param.text_projection(theta).detach().cpu().numpy()
        mu_img, mu_txt = centring if centring is not None else (0.0, 0.0)
        return lambda view: (_norm((view.x_feat - mu_img) @ wi.T), _norm((view.bank_feat - mu_txt) @ wt.T))
    if embedder is None:
        raise ValueError("a block-mode model under test encodes the raw images and captions itself: pass the "
                         "Embedder holding the backbone its block features were extracted from (embedder=...).")
    if centring is not None:
        raise ValueError("block mode has no feature centring (finetune.centre: false); got centring means.")
    from ecif.experiments.block_merge import merge_block_lora

    merged = merge_block_lora(embedder.model, param, theta)
    w_img = projection_matrix(merged, "image").astype(np.float64)
    w_txt = projection_matrix(merged, "text").astype(np.float64)

    def embed(view: SetView) -> tuple[np.ndarray, np.ndarray]:
        if view.images is None or view.bank is None:
            raise ValueError("this view holds no raw images and bank captions (build it with encode_set): a "
                             "block-mode model under test needs them.")
        x = image_features(merged, view.images, progress=False).astype(np.float64)
        y = text_features(merged, embedder.tokenizer, list(view.bank), progress=False).astype(np.float64)
        return _norm(x @ w_img.T), _norm(y @ w_txt.T)

    return embed


def respond(param, theta: torch.Tensor, view: SetView, centring=None, embedder: Embedder | None = None) -> np.ndarray:
    """Index ``(n,)`` of the bank entry each image retrieves under the model ``(param, theta)``:
    the highest cosine of :func:`response_model`'s embeddings (``centring``: head mode's
    centring means, ``None`` for none; ``embedder``: the backbone a block-mode model is merged into)."""
    return _retrieve(response_model(param, theta, embedder, centring)(view))


def _retrieve(embeddings: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    u, w = embeddings
    return np.argmax(u @ w.T, axis=1)


def _item_key(view: SetView) -> np.ndarray:
    names = sorted(k for k in view.attributes if k != "template")
    return np.array(["|".join(str(view.attributes[a][i]) for a in names) for i in range(len(view))])


def fit_reference_estimator(embedder: Embedder, split: Split, ridge: float = 1e-2) -> E.GaussianConditional:
    """The shared CLUB estimator ``q(y | x)`` of the paper's protocol: a linear-Gaussian fit on
    the clean pairs of ``split`` (image embedding -> clean caption embedding), fitted once and
    used for every set and every model."""
    v = encode_set(embedder, split)
    return E.fit_linear_gaussian(v.z_v, v.z_y, ridge=ridge)


def evaluate(view: SetView, idx: np.ndarray, club_kw: dict | None = None,
             q: E.GaussianConditional | None = None) -> dict:
    """EMI of the responses ``idx`` (bank indices) on ``view`` (with the shared estimator ``q``,
    or refitted per term with ``club_kw``), with the retrieval accuracy (response caption =
    reference caption) and the plug-in discrete MI of the image's attribute tuple with the
    response caption (``dmi_model``) and with the reference caption (``dmi_reference``)."""
    club_kw = dict(club_kw or {})
    idx = np.asarray(idx)
    if q is not None:
        club_kw = {}
    r = E.emi(view.z_v, view.z_y[idx], view.z_y, q=q, **club_kw)
    clean = np.asarray(view.clean)
    key = _item_key(view)
    return {**r.as_dict(), "accuracy": float(np.mean(clean[idx] == clean)),
            "dmi_model": E.discrete_mi(key, clean[idx]), "dmi_reference": E.discrete_mi(key, clean)}


def shift_scenario(p: SetView, p_idx, q: SetView, q_idx, club_kw: dict | None = None,
                   form: str = "scale_adjusted", entropy_scale: float | None = None,
                   estimator: E.GaussianConditional | None = None) -> dict:
    """EMID between the set ``p`` and the shifted set ``q`` (responses ``p_idx``, ``q_idx``) and
    the bound with its terms; ``emi_p``, ``emi_q``, accuracies and their drop, and ``dmi_emid``
    (the same difference with the discrete plug-in MI of attribute tuples and captions)."""
    ep, eq = evaluate(p, p_idx, club_kw, estimator), evaluate(q, q_idx, club_kw, estimator)
    bound = E.emid_bound(p.z_v, p.z_t, p.z_y[np.asarray(p_idx)], p.z_y, q.z_v, q.z_t,
                         q.z_y[np.asarray(q_idx)], q.z_y, form=form, entropy_scale=entropy_scale)
    return {"emi_p": ep["emi"], "emi_q": eq["emi"], "emid": ep["emi"] - eq["emi"],
            "acc_p": ep["accuracy"], "acc_q": eq["accuracy"], "acc_drop": ep["accuracy"] - eq["accuracy"],
            "dmi_emid": (ep["dmi_model"] - ep["dmi_reference"]) - (eq["dmi_model"] - eq["dmi_reference"]),
            **bound}


def scenario_grid(visual=shifts.VISUAL, text=shifts.TEXT, levels=(1, 2, 3), joint=None,
                  joint_level: int = 2) -> list[tuple[tuple[str, int], ...]]:
    """Scenarios as tuples of ``(kind, level)`` shifts applied in order: every single shift at
    every level, plus each pair of kinds in ``joint`` (e.g. ``[("blur", "typo")]``; ``"all"``:
    every visual x text pair) at ``joint_level``."""
    out = [((k, int(lv)),) for k in (*visual, *text) for lv in levels]
    if joint == "all":
        joint = [(v, t) for v in visual for t in text]
    out += [tuple((k, int(joint_level)) for k in pair) for pair in (joint or [])]
    return out


def scenario_name(scenario) -> str:
    return "+".join(f"{k}{lv}" for k, lv in scenario)


def run_shift_grid(embedder: Embedder, split: Split, param, theta, scenarios, seeds=(0,),
                   club_kw: dict | None = None, form: str = "scale_adjusted",
                   entropy_scale: float | None = None,
                   estimator: E.GaussianConditional | None = None, centring=None) -> pd.DataFrame:
    """One row per (scenario, seed): the clean ``split`` is P, the shifted copy Q; columns of
    :func:`shift_scenario` plus ``scenario``, ``seed``, ``modality`` (visual/text/joint).
    ``centring``: as in :func:`respond`; a block-mode model is merged into ``embedder``'s backbone
    once (:func:`response_model`)."""
    club_kw = dict(club_kw or {})
    model = response_model(param, theta, embedder, centring)
    p = encode_set(embedder, split)
    p_idx = _retrieve(model(p))
    rows = []
    for seed in seeds:
        kw = {**club_kw, "seed": int(seed)}
        for sc in scenarios:
            shifted = split
            for kind, lv in sc:
                shifted = shifts.apply_shift(shifted, kind, lv, seed=int(seed))
            q = encode_set(embedder, shifted, p.clean)
            mods = {shifts.modality(k) for k, _ in sc}
            rows.append({"scenario": scenario_name(sc), "seed": int(seed),
                         "modality": mods.pop() if len(mods) == 1 else "joint",
                         **shift_scenario(p, p_idx, q, _retrieve(model(q)), kw, form, entropy_scale,
                                           estimator)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ statistics


def _ranks(a: np.ndarray) -> np.ndarray:
    return pd.Series(a).rank(method="average").to_numpy()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_correlation(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson and Spearman correlation of paired values with percentile bootstrap intervals
    (resampling the pairs ``n_boot`` times, seeded). Keys ``pearson``, ``pearson_lo``,
    ``pearson_hi``, ``spearman``, ``spearman_lo``, ``spearman_hi``, ``n``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise ValueError("need two 1-d arrays of equal length >= 3")
    rng = np.random.default_rng(seed)
    boots = {"pearson": [], "spearman": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        boots["pearson"].append(_corr(a[i], b[i]))
        boots["spearman"].append(_corr(_ranks(a[i]), _ranks(b[i])))
    out = {"pearson": _corr(a, b), "spearman": _corr(_ranks(a), _ranks(b)), "n": int(len(a))}
    tail = 100 * (1 - level) / 2
    for k, v in boots.items():
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        out[f"{k}_lo"], out[f"{k}_hi"] = (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) \
            if len(v) else (float("nan"), float("nan"))
    return out


def correlation_table(grid: pd.DataFrame, pairs=(("emid", "bound"), ("emid", "acc_drop"), ("bound", "acc_drop")),
                      n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Correlations across scenarios: for each ``(a, b)`` in ``pairs``, on the per-scenario means
    over seeds (``seed = "mean"``) and within each seed. One row per (pair, seed)."""
    rows = []
    means = grid.groupby("scenario", sort=False)[sorted({c for p in pairs for c in p})].mean()
    for a, b in pairs:
        rows.append({"x": a, "y": b, "seed": "mean", **bootstrap_correlation(means[a], means[b], n_boot, seed)})
        for s, part in grid.groupby("seed"):
            rows.append({"x": a, "y": b, "seed": str(s),
                         **bootstrap_correlation(part[a], part[b], n_boot, seed)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- misalignment (exp. B)


def removal_sets(harm: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The three removal sets of :func:`removal_refits` (sorted indices, ``k = mask.sum()`` each)."""
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    order = np.argsort(-np.asarray(harm, dtype=float), kind="stable")
    return {"ecif": np.sort(order[:k]),
            "random": np.sort(np.random.default_rng([seed, 101]).choice(len(mask), k, replace=False)),
            "oracle": np.flatnonzero(mask)}


def removal_refits(objective, theta_hat: torch.Tensor, harm: np.ndarray, mask: np.ndarray, seed: int = 0,
                   gtol: float = 1e-9, preconditioner=None) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """Refit without three sets of ``k = mask.sum()`` train pairs: ``ecif`` (the ``k`` highest
    harm scores), ``random`` (uniform, drawn from ``[seed, 101]``, a stream apart from the one
    ``ecif.data.noise.inject`` uses for ``seed``) and ``oracle`` (the misaligned pairs), warm-started
    (falling back to a fit from ``theta0`` when the warm start does not converge). Returns
    name -> (removed indices, refitted theta). Nothing to remove (``k = 0``): empty dict."""
    from ecif.experiments.retraining import retrain

    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    if k == 0:
        return {}
    out = {}
    for name, idx in removal_sets(harm, mask, seed).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = retrain(objective, theta_hat, idx, gtol=gtol, preconditioner=preconditioner)
        if not res.converged:  # a large removal can leave the warm start's basin: fit from the start
            res = retrain(objective, theta_hat, idx, init="theta0", gtol=gtol)
        if not res.converged:
            raise RuntimeError(f"refit without the {name} set did not converge: grad norm {res.grad_norm:.2e}")
        out[name] = (idx, res.theta)
    return out


def marginal_check(embedder: Embedder, train: Split, corrupted_captions: list[str],
                   club_kw: dict | None = None, q: E.GaussianConditional | None = None) -> dict:
    """What the bound's input terms and the pair-level MI see of a corruption of the training
    pairs: JSD of the image embeddings (same images: 0), JSD of the caption embeddings between
    the clean and the corrupted captions (a shuffle permutes captions: 0), and the CLUB MI of
    (image, caption) pairs (refitted per set; with the shared estimator ``q`` too, if given) and
    the discrete MI of (attribute tuple, caption), clean vs corrupted."""
    x = embedder.embed_images(train.images, embedder.image_features(train.images))
    clean = list(train.captions)
    zc = embedder.embed_texts(embedder.text_features(clean))
    zk = embedder.embed_texts(embedder.text_features(list(corrupted_captions)))
    names = sorted(k for k in train.attributes if k != "template")
    key = ["|".join(str(train.attributes[a][i]) for a in names) for i in range(len(train))]
    kw = dict(club_kw or {})
    out = {"jsd_images": E.representation_jsd(x, x), "jsd_captions": E.representation_jsd(zc, zk),
           "mi_clean": E.club(x, zc, **kw), "mi_corrupted": E.club(x, zk, **kw),
           "dmi_clean": E.discrete_mi(key, clean), "dmi_corrupted": E.discrete_mi(key, list(corrupted_captions))}
    if q is not None:
        out.update(mi_shared_clean=q.club(x, zc), mi_shared_corrupted=q.club(x, zk))
    return out


def relabelling_check(embedder: Embedder, view: SetView, attribute: str, mapping: dict[int, int],
                      spec, club_kw: dict | None = None, q: E.GaussianConditional | None = None) -> dict:
    """A consistent relabelling of the *reference* responses: every caption gets attribute
    ``attribute`` mapped by the bijection ``mapping`` (codes), so the responses are wrong wherever
    the code moves but carry the same information about the images. Returns the accuracy, the
    EMI with each term's CLUB refitted (``emi_refit``: follows the MI), with the shared estimator
    ``q`` if given (``emi_shared``: a fit-to-reference score) and the discrete EMI of attribute
    tuples and captions (``dmi_emi``: exactly MI)."""
    if sorted(mapping.values()) != sorted(mapping.keys()):
        raise ValueError("mapping must be a bijection of a set of codes")
    attrs = {k: np.asarray(v).copy() for k, v in view.attributes.items()}
    attrs[attribute] = np.array([mapping.get(int(c), int(c)) for c in attrs[attribute]])
    relabelled = spec.render(attrs)
    z = embedder.embed_texts(embedder.text_features(relabelled))
    key = _item_key(view)
    clean = np.asarray(view.clean)
    refit = E.emi(view.z_v, z, view.z_y, **dict(club_kw or {}))
    out = {"accuracy": float(np.mean(np.asarray(relabelled) == clean)),
           "emi_refit": refit.emi, "mi_reference_refit": refit.mi_reference,
           "dmi_emi": E.discrete_mi(key, relabelled) - E.discrete_mi(key, clean)}
    if q is not None:
        out["emi_shared"] = E.emi(view.z_v, z, view.z_y, q=q).emi
    return out
