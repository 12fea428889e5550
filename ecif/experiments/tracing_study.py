"""Where a binding lives: causal traces of several models as tidy tables.

:func:`tracing_study` traces the text tower and the image tower
(:mod:`ecif.experiments.tracing`) of every model it is given on the same same-slot corruptions
of a ``shapes`` split (e.g. a model fine-tuned on clean captions and one fine-tuned with a
systematic attribute swap, both merged by :func:`ecif.experiments.block_merge.merge_block_lora`),
and returns the mean NIE over the flipped examples per model, tower, module kind, restoration
(single layer or window), layer and token (position and role), with a per-layer summary.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ecif.experiments.tracing import Trace, shapes_swap_examples, trace_image, trace_text

__all__ = ["trace_tables", "tracing_study"]


def _role_means(v: np.ndarray, roles: np.ndarray) -> dict[str, float]:
    """``{role: mean over examples of the mean over that example's tokens of the role}`` for
    per-example values ``v (m, T)`` and roles ``(m, T)``."""
    out = {}
    for role in [r for r in dict.fromkeys(roles.ravel()) if r != "pad"]:
        hit = roles == role
        with np.errstate(invalid="ignore"):
            per = np.where(hit, v, 0.0).sum(axis=1) / hit.sum(axis=1)
        per = per[hit.any(axis=1)]
        out[role] = float(per.mean()) if len(per) else float("nan")
    return out


def trace_tables(tr: Trace, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tidy tables of one trace over its flipped examples: per token position
    (``model, tower, kind, restore, layer, token, role, nie``; ``role`` the most common role
    at that position) and per token role (``model, tower, kind, restore, layer, role, nie``).
    ``restore`` is ``"layer"`` (one layer) or ``"window{w}"``."""
    fl = tr.flipped
    tok_rows, role_rows = [], []
    roles = tr.roles[fl]
    common = [pd.Series(roles[:, t]).mode().iloc[0] if len(roles) else "?" for t in range(tr.roles.shape[1])]
    restores = [("layer", False)] + ([(f"window{tr.window}", True)] if tr.restored_window is not None else [])
    for name, windowed in restores:
        v_all = tr.nie(windowed)[fl]
        for ki, kind in enumerate(tr.kinds):
            heat = tr.heatmap(kind, windowed)
            for layer in range(heat.shape[0]):
                for t in range(heat.shape[1]):
                    tok_rows.append((model, tr.tower, kind, name, layer, t, common[t], heat[layer, t]))
                for role, val in _role_means(v_all[:, ki, layer], roles).items():
                    role_rows.append((model, tr.tower, kind, name, layer, role, val))
    tokens = pd.DataFrame(tok_rows, columns=["model", "tower", "kind", "restore", "layer", "token", "role", "nie"])
    by_role = pd.DataFrame(role_rows, columns=["model", "tower", "kind", "restore", "layer", "role", "nie"])
    for df in (tokens, by_role):
        df["n_flipped"] = int(fl.sum())
    return tokens, by_role


def _layer_summary(tokens: pd.DataFrame, by_role: pd.DataFrame) -> pd.DataFrame:
    """Per (model, tower, kind, restore, layer): the largest NIE over token positions, the NIE
    at the corrupted tokens (role ``constraint`` / ``corrupted``) and at the pooled token
    (text: ``last``; image: ``cls``)."""
    keys = ["model", "tower", "kind", "restore", "layer"]
    out = tokens.groupby(keys, sort=False)["nie"].max().rename("nie_max").reset_index()
    at = by_role.assign(where=by_role["role"].map({"constraint": "nie_corrupted", "corrupted": "nie_corrupted",
                                                   "last": "nie_last", "cls": "nie_last"}))
    at = at.dropna(subset=["where"]).pivot_table(index=keys, columns="where", values="nie", sort=False).reset_index()
    out = out.merge(at, on=keys, how="left")
    return out.merge(tokens.groupby(keys, sort=False)["n_flipped"].first().reset_index(), on=keys)


def tracing_study(models: dict, tokenizer, split, *, attribute: str = "color", n_examples: int = 32, seed: int = 0,
                  swap: dict | None = None, kinds=("attn", "mlp"), window: int = 3, towers=("text", "image"),
                  rows: int = 2048) -> dict:
    """Trace every model of ``models`` (``{name: open_clip model}``, sharing ``tokenizer``) on
    the first ``n_examples`` same-slot corruptions of ``attribute`` in the ``shapes`` ``split``
    (:func:`~ecif.experiments.tracing.shapes_swap_examples` with ``seed`` and ``swap``).

    Returns ``{"tokens", "roles", "layers", "examples"}`` DataFrames (:func:`trace_tables`, the
    per-layer summary, and per model and tower ``p_clean``, ``p_corrupt`` means, ``n``,
    ``n_flipped`` and the seconds the trace took) and ``"traces"``: ``{(model, tower): Trace}``.
    """
    unknown = set(towers) - {"text", "image"}
    if unknown or not towers:
        raise ValueError(f"towers must be a non-empty subset of ('text', 'image'), got {tuple(towers)}.")
    if not models:
        raise ValueError("models is empty: pass {name: open_clip model}.")
    ex = shapes_swap_examples(split, attribute, n_examples, seed=seed, swap=swap)
    tokens, roles, examples, traces = [], [], [], {}
    for name, model in models.items():
        for tower in towers:
            t0 = time.perf_counter()
            fn = trace_text if tower == "text" else trace_image
            tr = fn(model, tokenizer, ex, kinds=kinds, window=window, rows=rows)
            seconds = time.perf_counter() - t0
            traces[(name, tower)] = tr
            a, b = trace_tables(tr, name)
            tokens.append(a)
            roles.append(b)
            examples.append({"model": name, "tower": tower, "n": len(tr.p_clean), "n_flipped": int(tr.flipped.sum()),
                             "p_clean": float(tr.p_clean.mean()), "p_corrupt": float(tr.p_corrupt.mean()),
                             "seconds": seconds})
    tokens_df, roles_df = pd.concat(tokens, ignore_index=True), pd.concat(roles, ignore_index=True)
    return {"tokens": tokens_df, "roles": roles_df, "layers": _layer_summary(tokens_df, roles_df),
            "examples": pd.DataFrame(examples), "traces": traces}
