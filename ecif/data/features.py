"""Frozen features of every split, and the base projections the ECIF core fine-tunes.

Contract (what :func:`extract_features` returns and :func:`save_features` writes as float32
``.npy`` files into one folder):

- ``x_{split}`` (n, d_img): image features *before* the image tower's final projection;
- ``y_{split}`` (n, d_txt): text features of the split's captions before the text projection
  (for ``train``: the captions actually paired after corruption; ``y_train_clean`` holds the
  clean captions' features when a corruption was applied);
- ``labels_{split}`` (n,) int64 where the data set has labels;
- ``class_text`` (C, d_txt): features of the zero-shot class prompts;
- ``W_img`` (e, d_img), ``W_txt`` (e, d_txt): the final projections, such that the model's
  embedding before normalisation is ``x @ W_img.T`` (resp. ``y @ W_txt.T``);
- ``log_logit_scale`` (0-d): the model's ``logit_scale`` parameter (the scale is its exp);
- ``noise_mask`` (n_train,) bool: ground-truth corrupted train pairs (when corrupted).

Captions and bookkeeping go to ``features.json``.

How the projection is taken: for open_clip ViT image towers the ``proj`` matrix (x is the
pooled, ``ln_post``-normalised token); for Hugging Face text towers with ``proj_type='linear'``
the bias-free ``proj`` layer (y is the pooled transformer output); for open_clip's own text
transformer the ``text_projection`` matrix or layer. A final ``nn.Linear`` *with* bias is made
exact by appending a constant-1 feature to x (and the bias as the last column of W). When the
tower ends in anything else (an MLP head, attention pooling with built-in projection as in
ModifiedResNet), the features are the final embeddings and W is the identity (e = d).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ecif.data.pairs import SPLITS, Dataset


# --------------------------------------------------------------------------------------------
# locating and lifting the final projection


TOWERS = ("image", "text")


def _projection_slot(model, tower: str):
    """(owner module, attribute name) of the final projection of ``tower`` ('image'/'text'), or None."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    if tower == "image":
        vis = model.visual
        if isinstance(getattr(vis, "proj", None), nn.Parameter):
            return vis, "proj"
        head = getattr(vis, "head", None)  # open_clip TimmModel
        if head is not None and isinstance(getattr(head, "proj", None), nn.Linear):
            return head, "proj"
        return None
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP: HF tower or TextTransformer
        for attr in ("proj", "text_projection"):
            p = getattr(text, attr, None)
            if isinstance(p, (nn.Parameter, nn.Linear)):
                return text, attr
        return None
    if isinstance(getattr(model, "text_projection", None), (nn.Parameter, nn.Linear)):  # CLIP
        return model, "text_projection"
    return None


def projection_matrix(model, tower: str) -> np.ndarray | None:
    """W (e, d) of the final projection of ``tower`` (bias appended as a last column), or None
    when the tower has no plain linear final projection (then features are embeddings, W = I)."""
    slot = _projection_slot(model, tower)
    if slot is None:
        return None
    p = getattr(*slot)
    if isinstance(p, nn.Linear):
        W = p.weight.detach()
        if p.bias is not None:
            W = torch.cat([W, p.bias.detach()[:, None]], dim=1)
    else:  # open_clip stores (d, e) matrices used as x @ proj
        W = p.detach().T
    return W.float().cpu().numpy().astype(np.float32)


@contextlib.contextmanager
def without_projection(model, tower: str):
    """Context manager: inside it, ``model``'s final projection of ``tower`` is removed, so
    ``encode_image`` / ``encode_text`` return pre-projection features.

    ``tower`` is ``"image"`` or ``"text"`` (anything else: ValueError). A projection stored as a
    matrix (open_clip's ``(d, e)`` ``proj`` / ``text_projection`` parameters) is set to ``None``,
    one stored as an ``nn.Linear`` is replaced by ``nn.Identity``; the encoder then returns
    ``(n, d)`` features in the model's own dtype and device, with d the width the projection read
    (d_img or d_txt, not counting a bias feature). The original module or parameter is put back on
    exit, also when the body raises; the model is otherwise untouched (no copy, gradients flow
    as usual if the caller enables them).

    Yields ``bias`` (bool): True when the removed projection is an ``nn.Linear`` with a bias; the
    caller then appends a constant-1 feature (:func:`append_bias_feature`) so that
    ``features @ W.T`` with ``W = projection_matrix(model, tower)`` (bias as last column) equals
    the projected embedding exactly. False otherwise, including a tower with no plain linear
    final projection: then nothing is removed and the encoder's output is the final embedding
    (``projection_matrix`` is None, W = I).
    """
    slot = _projection_slot(model, tower)
    if slot is None:
        yield False
        return
    owner, attr = slot
    saved = getattr(owner, attr)
    if isinstance(saved, nn.Parameter):
        setattr(owner, attr, None)
    else:
        setattr(owner, attr, nn.Identity())
    try:
        yield isinstance(saved, nn.Linear) and saved.bias is not None
    finally:
        setattr(owner, attr, saved)


def append_bias_feature(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """``x`` (n, d) with a constant-1 column appended, (n, d + 1), when ``bias`` is True; ``x``
    itself (the same tensor, not a copy) when False.

    The appended column has ``x``'s dtype and device, so the result keeps ``x``'s dtype (and its
    autograd graph). With ``bias`` from :func:`without_projection`, ``append_bias_feature(x, bias)
    @ W.T`` is the projected embedding, W = :func:`projection_matrix` (bias in its last column).
    """
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1) if bias else x


def _device(model) -> torch.device:
    """Where the model's weights are (``common.device``): inputs go there, features come back to the CPU."""
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# batched encoding


@torch.no_grad()
def image_features(model, images: np.ndarray, batch_size: int = 256, progress: bool = True, desc: str = "images") -> np.ndarray:
    """Pre-projection image features, float32 (n, d_img), of uint8 images (n, H, W[, C])."""
    from tqdm.auto import tqdm

    from ecif.data.encoders import image_tensor

    cfg = getattr(model.visual, "preprocess_cfg", {})
    dev = _device(model)
    out = []
    with without_projection(model, "image") as bias:
        for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
            x = model.encode_image(image_tensor(images[i : i + batch_size], cfg).to(dev))
            out.append(append_bias_feature(x.float(), bias).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def text_features(model, tokenizer, texts: list[str], batch_size: int = 256, progress: bool = True, desc: str = "texts") -> np.ndarray:
    """Pre-projection text features, float32 (len(texts), d_txt). Each distinct text is encoded once."""
    from tqdm.auto import tqdm

    uniq, inverse = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    dev = _device(model)
    out = []
    with without_projection(model, "text") as bias:
        for i in tqdm(range(0, len(uniq), batch_size), desc=desc, disable=not progress):
            y = model.encode_text(tokenizer(list(uniq[i : i + batch_size])).to(dev))
            out.append(append_bias_feature(y.float(), bias).cpu())
    feats = torch.cat(out).numpy().astype(np.float32)
    return feats[inverse]


def extract_features(
    model,
    tokenizer,
    dataset: Dataset,
    corruption=None,
    splits: tuple[str, ...] = SPLITS,
    batch_size: int = 256,
    progress: bool = True,
) -> dict:
    """Features of ``splits`` of ``dataset`` under ``model`` (see the module docstring for keys).

    Args:
        model, tokenizer: an open_clip model (eval mode) and its tokenizer; the model's device
            (``common.device``) is where the encoding runs, the features come back as CPU arrays.
        dataset: the data set; ``corruption`` (an :class:`ecif.data.noise.Corruption` of its train
            split) replaces the train captions and adds ``noise_mask`` and ``y_train_clean``.
        splits: which splits to encode.
    """
    model.eval()
    feats: dict = {}
    meta = {"dataset": dataset.name, "splits": list(splits), "captions": {}, "class_prompts": dataset.class_prompts}
    for s in splits:
        sp = dataset[s]
        captions = sp.captions
        if s == "train" and corruption is not None:
            if len(corruption.captions) != len(sp):
                raise ValueError(f"corruption has {len(corruption.captions)} captions but the train split has {len(sp)} pairs")
            feats["y_train_clean"] = text_features(model, tokenizer, captions, batch_size, progress, "clean train captions")
            feats["noise_mask"] = corruption.mask.astype(bool)
            captions = corruption.captions
            meta["noise"] = {"kind": corruption.kind, "rate": corruption.rate, "seed": corruption.seed}
        feats[f"x_{s}"] = image_features(model, sp.images, batch_size, progress, f"{s} images")
        feats[f"y_{s}"] = text_features(model, tokenizer, captions, batch_size, progress, f"{s} captions")
        if sp.labels is not None:
            feats[f"labels_{s}"] = sp.labels.astype(np.int64)
        meta["captions"][s] = list(captions)
    if dataset.class_prompts is not None:
        feats["class_text"] = text_features(model, tokenizer, dataset.class_prompts, batch_size, False)
    d_img = feats[f"x_{splits[0]}"].shape[1]
    d_txt = feats[f"y_{splits[0]}"].shape[1]
    W_img, W_txt = projection_matrix(model, "image"), projection_matrix(model, "text")
    feats["W_img"] = W_img if W_img is not None else np.eye(d_img, dtype=np.float32)
    feats["W_txt"] = W_txt if W_txt is not None else np.eye(d_txt, dtype=np.float32)
    feats["log_logit_scale"] = np.asarray(float(model.logit_scale.detach()), dtype=np.float32)
    meta["projection"] = {"image": "linear" if W_img is not None else "identity", "text": "linear" if W_txt is not None else "identity"}
    feats["meta"] = meta
    return feats


def save_features(folder: str | Path, feats: dict) -> Path:
    """Write every array of ``feats`` as ``<key>.npy`` and ``feats['meta']`` as ``features.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in feats.items():
        if k != "meta":
            np.save(folder / f"{k}.npy", np.asarray(v))
    (folder / "features.json").write_text(json.dumps(feats.get("meta", {}), indent=1))
    return folder


def load_features(folder: str | Path) -> dict:
    """Read a folder written by :func:`save_features`: key -> array, plus ``meta`` (dict)."""
    folder = Path(folder)
    if not (folder / "features.json").exists():
        raise FileNotFoundError(f"no features in {str(folder)!r}; extract them with `python -m ecif.data.features extract --out {folder}`")
    feats = {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
    feats["meta"] = json.loads((folder / "features.json").read_text())
    return feats


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.data.features extract --dataset digits --data data [--encoder ViT-B-32:openai]
    [--encoder-dir artifacts/encoder] [--noise artifacts/noise] --out artifacts/features``."""
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import load_encoder
    from ecif.data.noise import load_corruption

    p = argparse.ArgumentParser(prog="python -m ecif.data.features", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="encode every split to cached feature arrays")
    e.add_argument("--dataset", default="digits")
    e.add_argument("--data", default=None)
    e.add_argument("--encoder", default="embedded", help="common.encoder value: embedded | ARCH:TAG | ARCH:PATH | PATH")
    e.add_argument("--encoder-dir", default="artifacts/encoder", help="folder of the embedded encoder (python -m ecif.data.encoders train)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--noise", default=None, help="folder written by ecif.data.noise.save_corruption for the train split")
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    model, tok, _ = load_encoder(args.encoder, args.encoder_dir, device=args.device)
    ds = load_dataset(args.dataset, root=args.data)
    corruption = load_corruption(args.noise) if args.noise else None
    feats = extract_features(model, tok, ds, corruption, batch_size=args.batch_size)
    save_features(args.out, feats)
    print(f"wrote features to {args.out}")


if __name__ == "__main__":
    main()
