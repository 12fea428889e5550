"""Where two fine-tunes differ inside the encoder: per-layer contrasts of their causal traces, and
whether a swap-trained model retrieves the swapped attribute.

:func:`layer_contrast` reads a :func:`ecif.experiments.tracing_study.tracing_study` of several
models (e.g. ``base``: the frozen encoder, ``clean``: fine-tuned on clean captions, ``swap``:
fine-tuned with a systematic attribute swap) and gives, per tower, module kind and layer, each
model's mean NIE over the token positions of its layer x token heatmap (single-layer
restorations, mean over the flipped examples first) and the difference ``other - reference``.
:func:`largest_difference` names the layer where that difference is largest in absolute value.
Identical models give a difference of exactly 0 (tested). A difference is not a proof of
where a change sits: a restoration at layer ``l`` is recomputed through every later layer, and
the clean and corrupted states it swaps come through every earlier one, so a change of one
block can move the NIE of any layer; the contrast says where the two models' traces part.

:func:`swap_retrieval` asks the question behind the trace directly: for a swap rule
``attribute: source -> target`` and test images whose ``attribute`` is ``source``, the
retrieval probability (softmax over the ``K`` captions that differ only in that slot, at the
model's logit scale) of the true caption and of the swapped caption, and the share of images
whose top caption is the swapped one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ecif.experiments.tracing import candidate_embeddings, retrieval_probability, shapes_swap_examples, text_ids

__all__ = ["largest_difference", "layer_contrast", "swap_retrieval"]


def _layer_means(tokens: pd.DataFrame, restore: str) -> pd.DataFrame:
    """Mean (over token positions, NaN skipped) and maximum NIE per (model, tower, kind, layer)."""
    t = tokens[tokens["restore"] == restore]
    g = t.groupby(["model", "tower", "kind", "layer"], sort=False)["nie"]
    return pd.DataFrame({"nie_mean": g.mean(), "nie_max": g.max()}).reset_index()


def layer_contrast(study: dict, reference: str = "clean", other: str = "swap", restore: str = "layer") -> pd.DataFrame:
    """Per (tower, kind, layer): ``nie_mean_<model>`` for every model of ``study`` (mean over
    token positions of the heatmap of ``restore``: ``"layer"`` or ``"window<w>"``), and
    ``diff = nie_mean_<other> - nie_mean_<reference>``, ``diff_max`` the same for the largest
    NIE over tokens. Only the layers each tower has (towers of different depth are not padded).
    ``ValueError`` when ``reference`` or ``other`` is not a model of the study."""
    tokens = study["tokens"]
    models = list(dict.fromkeys(tokens["model"]))
    for name in (reference, other):
        if name not in models:
            raise ValueError(f"model {name!r} is not in the study (models: {models}); pass reference= and other= "
                             "among them.")
    if restore not in set(tokens["restore"]):
        raise ValueError(f"restore {restore!r} is not in the study (has {sorted(set(tokens['restore']))}).")
    m = _layer_means(tokens, restore)
    keys = ["tower", "kind", "layer"]
    wide = m.pivot_table(index=keys, columns="model", values=["nie_mean", "nie_max"], sort=False, dropna=False)
    out = pd.DataFrame(index=wide.index)
    for name in models:
        out[f"nie_mean_{name}"] = wide[("nie_mean", name)]
    out["diff"] = wide[("nie_mean", other)] - wide[("nie_mean", reference)]
    out["diff_max"] = wide[("nie_max", other)] - wide[("nie_max", reference)]
    # the pivot crosses every tower with every layer number: drop the layers a tower does not have
    out = out.dropna(how="all", subset=[f"nie_mean_{name}" for name in models])
    return out.reset_index()


def largest_difference(contrast: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """Per tower (and module kind, unless ``kind`` picks one): the layer with the largest
    ``|diff|`` of :func:`layer_contrast`, with that ``diff``; towers whose differences are all NaN
    (no flipped example) are left out."""
    c = contrast.dropna(subset=["diff"])
    if kind is not None:
        c = c[c["kind"] == kind]
    if c.empty:
        return pd.DataFrame(columns=["tower", "kind", "layer", "diff"])
    idx = c.assign(a=c["diff"].abs()).groupby(["tower", "kind"], sort=False)["a"].idxmax()
    return c.loc[idx, ["tower", "kind", "layer", "diff"]].reset_index(drop=True)


@torch.no_grad()
def swap_retrieval(models: dict, tokenizer, split, rules, n_examples: int = 32, seed: int = 0) -> pd.DataFrame:
    """Image -> caption retrieval under swap ``rules`` (``[(attribute, source, target), ...]``).

    For every model (``{name: open_clip model}``) and rule: the first ``n_examples`` items of the
    ``shapes`` ``split`` whose ``attribute`` is ``source``, drawn with the ``K`` values of the
    slot (:func:`~ecif.experiments.tracing.shapes_swap_examples`, ``seed``); each image showing
    ``source`` is the query, the ``K`` captions that differ only in ``attribute`` the candidates.
    Rows: ``model, attribute, source, target, n, p_true, p_swapped`` (mean probabilities of the
    true and the swapped caption) and ``top_swapped`` (share of images whose most probable
    caption is the swapped one)."""
    from ecif.data.encoders import image_tensor

    rows = []
    for attribute, source, target in rules:
        ex = shapes_swap_examples(split, attribute, n_examples, seed=seed, swap={source: target})
        n, k = ex.images.shape[:2]
        true_i = torch.as_tensor(ex.target, device="cpu")
        wrong_i = torch.as_tensor(ex.wrong, device="cpu")
        for name, model in models.items():
            dev = next(model.parameters()).device
            cfg = getattr(model.visual, "preprocess_cfg", {})
            q = model.encode_image(image_tensor(ex.images[np.arange(n), ex.target], cfg).to(dev))
            ids = text_ids(model, tokenizer, [c for cs in ex.captions for c in cs])
            cand = candidate_embeddings(model, "text", ids, n, k)
            scale = float(model.logit_scale.detach().exp())
            p_true = retrieval_probability(q, cand, true_i.to(dev), scale).cpu()
            p_wrong = retrieval_probability(q, cand, wrong_i.to(dev), scale).cpu()
            qn = torch.nn.functional.normalize(q.double(), dim=-1)
            top = torch.einsum("ne,nke->nk", qn, torch.nn.functional.normalize(cand.double(), dim=-1)).argmax(-1).cpu()
            rows.append({"model": name, "attribute": attribute, "source": source, "target": target, "n": n,
                         "p_true": float(p_true.mean()), "p_swapped": float(p_wrong.mean()),
                         "top_swapped": float((top == wrong_i).double().mean())})
    return pd.DataFrame(rows)
