"""The model switch ``common.encoder``: which frozen CLIP encoder the pipeline uses.

Values (:meth:`EncoderSpec.parse`):

- ``embedded`` (default): the kit's own tiny open_clip model, trained by the ``encoder`` stage
  on the clean ``pretrain`` split (:func:`ecif.data.encoders.train_default`);
- ``ARCH:TAG``: an open_clip architecture with one of its pretrained tags, e.g.
  ``ViT-B-32:laion2b_s34b_b79k`` or ``ViT-B-32:openai``, read from the local cache only (the
  Hugging Face hub cache, or ``~/.cache/clip`` for URL weights);
- ``ARCH:PATH``: an open_clip architecture with a local checkpoint file, e.g.
  ``ViT-B-32:/models/open_clip_pytorch_model.bin`` (a PATH contains a ``/`` or ends in
  ``.pt``, ``.pth``, ``.bin``, ``.safetensors`` or ``.ckpt``);
- ``PATH``: a folder in the layout of open_clip's Hugging Face repositories: an
  ``open_clip_config.json`` (``model_cfg`` and ``preprocess_cfg``) beside one weights file
  (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ...). Any architecture,
  also one open_clip does not ship, e.g. ``/models/my-clip``.

Parsing is pure Python (no torch, no file access), so ``python -m ecif.kit.params check`` uses
it in a fraction of a second. :func:`check_available` then looks for the weights without
building the model and raises :class:`WeightsUnavailableError` naming what is missing, where it
looked and how to provide it; for a tag it imports open_clip (a few seconds) to read the tag's
download source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"
KINDS = ("embedded", "tag", "file", "folder")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
CONFIG_NAME = "open_clip_config.json"
#: weights files of a folder, in the order open_clip's ``local-dir:`` loader prefers them
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                  "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                  "pytorch_model.bin", "pytorch_model.pth", "model.pth")
EXAMPLES = ("embedded", "ViT-B-32:laion2b_s34b_b79k", "ViT-B-32:openai",
            "ViT-B-32:/path/to/open_clip_pytorch_model.bin", "/path/to/folder-with-open_clip_config.json")


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights were asked for but are neither on disk nor downloadable."""


def _download_hint(arch: str, tag: str) -> str:
    return (f"on a machine with internet run `python -c \"import open_clip; open_clip.create_model_and_transforms("
            f"'{arch}', pretrained='{tag}')\"` and copy what it downloaded to the same cache folder here")


def _looks_like_path(text: str) -> bool:
    return ("/" in text or "\\" in text or text.startswith(("~", "."))
            or text.lower().endswith(CHECKPOINT_SUFFIXES))


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed ``common.encoder`` value.

    ``kind``: ``embedded``, ``tag`` (``arch`` + ``tag``), ``file`` (``arch`` + ``path``) or
    ``folder`` (``path``). ``text`` is the value as written.
    """

    text: str
    kind: str
    arch: str | None = None
    tag: str | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text) -> EncoderSpec:
        """The spec of ``text``; ``ValueError`` (with the allowed forms) when it fits none."""
        if isinstance(text, EncoderSpec):
            return text
        forms = "; ".join(EXAMPLES)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"encoder must be a non-empty text, got {text!r} (forms: {forms})")
        text = text.strip()
        if text == EMBEDDED:
            return cls(text, "embedded")
        if text.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(f"encoder {text!r}: open_clip's {text.split(':')[0]}: names are not used here; write "
                             f"ARCH:TAG, ARCH:PATH or the PATH of a folder holding {CONFIG_NAME} (forms: {forms})")
        head, sep, tail = text.partition(":")
        if sep and head and not _looks_like_path(head) and not (len(head) == 1 and tail.startswith("\\")):
            if not tail:
                raise ValueError(f"encoder {text!r} names architecture {head!r} but no pretrained tag or checkpoint "
                                 f"after the colon (e.g. {head}:openai or {head}:/path/to/checkpoint.bin)")
            if _looks_like_path(tail):
                return cls(text, "file", arch=head, path=tail)
            return cls(text, "tag", arch=head, tag=tail)
        if _looks_like_path(text):
            return cls(text, "folder", path=text)
        raise ValueError(f"encoder {text!r} is not one of the forms: {forms} (an open_clip architecture needs its "
                         "pretrained tag or checkpoint after a colon; a folder path needs a '/')")

    def resolved_path(self) -> Path | None:
        """``path`` with ``~`` expanded, absolute (relative paths: from the working directory)."""
        return None if self.path is None else Path(self.path).expanduser().absolute()

    @property
    def pretrained(self) -> bool:
        return self.kind != "embedded"

    def describe(self) -> str:
        """One line for reports: what model this is and where its weights come from."""
        if self.kind == "embedded":
            return "embedded: the kit's tiny open_clip model, trained by the encoder stage on the pretrain split"
        if self.kind == "tag":
            return f"open_clip {self.arch}, pretrained weights {self.tag!r} (local cache only)"
        if self.kind == "file":
            return f"open_clip {self.arch}, local checkpoint {self.path}"
        return f"open_clip model folder {self.path} ({CONFIG_NAME} + weights)"


def folder_weights(folder: Path) -> Path | None:
    """The weights file open_clip's ``local-dir:`` loader would take from ``folder`` (None: none)."""
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext))
    return found[0] if found else None


def check_available(spec: EncoderSpec | str, cache_dir: str | Path | None = None) -> Path | None:
    """The local weights file of ``spec`` (None for ``embedded``: the encoder stage trains it; and
    for a tag not yet downloaded when :func:`downloads_allowed`).

    Files and folders are checked first, without importing anything heavy; a tag (or the
    architecture of a file) needs open_clip's registry, imported here.

    Raises:
        WeightsUnavailableError: the file, folder, config or cached download is missing; the
            message names it, where it looked, and how to provide it.
        ValueError: unknown architecture or tag.
    """
    spec = EncoderSpec.parse(spec)
    if spec.kind == "embedded":
        return None
    key = f"common.encoder = {spec.text!r}"
    if spec.kind == "file":
        p = spec.resolved_path()
        if not p.is_file():
            raise WeightsUnavailableError(
                f"{key}: checkpoint file {str(p)!r} for {spec.arch} does not exist"
                + (" (it is a folder)" if p.is_dir() else "")
                + f" (looked from the working directory {os.getcwd()}). Provide it: place the open_clip checkpoint "
                f"there, or point common.encoder at it ({spec.arch}:/path/to/open_clip_pytorch_model.bin), or use a "
                f"pretrained tag ({spec.arch}:TAG) whose download is in the local cache.")
    if spec.kind == "folder":
        p = spec.resolved_path()
        if p.is_file() and (p.parent / CONFIG_NAME).is_file():
            p = p.parent
        if not p.is_dir():
            raise WeightsUnavailableError(
                f"{key}: model folder {str(p)!r} does not exist (looked from the working directory {os.getcwd()}). "
                f"Provide it: a folder with {CONFIG_NAME} and its weights file (the layout of open_clip's Hugging "
                "Face repositories, e.g. a downloaded laion/CLIP-ViT-B-32-laion2B-s34B-b79K), or set common.encoder "
                "to ARCH:/path/to/checkpoint for an architecture open_clip ships.")
        if not (p / CONFIG_NAME).is_file():
            raise WeightsUnavailableError(
                f"{key}: model folder {str(p)!r} has no {CONFIG_NAME} (the model config open_clip needs: "
                "{\"model_cfg\": ..., \"preprocess_cfg\": ...}). Provide it beside the weights, or set common.encoder "
                "to ARCH:/path/to/checkpoint for an architecture open_clip ships.")
        weights = folder_weights(p)
        if weights is None:
            raise WeightsUnavailableError(
                f"{key}: model folder {str(p)!r} has {CONFIG_NAME} but no weights file (looked for "
                f"{', '.join(FOLDER_WEIGHTS[:3])}, *.safetensors, *.bin, *.pth). Place the checkpoint there.")
        return weights
    from ecif.data.encoders import cached_pretrained, open_clip_module

    open_clip = open_clip_module()
    if spec.arch not in open_clip.list_models():
        raise ValueError(f"{key}: unknown open_clip architecture {spec.arch!r}; see open_clip.list_models() "
                         f"(for another architecture give the PATH of a folder holding {CONFIG_NAME} and its weights)")
    if spec.kind == "file":
        return spec.resolved_path()
    try:
        return Path(cached_pretrained(spec.arch, spec.tag, cache_dir, what=key))
    except WeightsUnavailableError:
        if downloads_allowed():
            return None  # fetched when the model is first loaded
        raise


def downloads_allowed() -> bool:
    """True only with ``ECIF_ALLOW_DOWNLOAD=1`` and ``HF_HUB_OFFLINE`` not ``1``: then a tag that is
    not in the cache is downloaded when first loaded instead of refused."""
    return os.environ.get("ECIF_ALLOW_DOWNLOAD") == "1" and os.environ.get("HF_HUB_OFFLINE") != "1"
