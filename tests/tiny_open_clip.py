"""A tiny open_clip model of another architecture than the kit's default, saved by a test.

The default encoder is a ViT image tower with the MiniLM text tower (a ``CustomTextCLIP``).
This one is a plain open_clip ``CLIP`` with a ``ModifiedResNet`` image tower (attention
pooling, no separate projection matrix) and open_clip's own text transformer with the CLIP BPE
tokenizer, randomly initialised from a seed: everything open_clip builds offline.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
ARCH = "ecif-test-tiny-rn"


def save_tiny_resnet_clip(folder: str | Path, seed: int = 0) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (the layout of open_clip's
    Hugging Face repositories) into ``folder``; return the checkpoint file."""
    import torch

    from ecif.data.encoders import open_clip_module

    open_clip = open_clip_module()
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(embed_dim=MODEL_CFG["embed_dim"], vision_cfg=MODEL_CFG["vision_cfg"], text_cfg=MODEL_CFG["text_cfg"])
    assert type(model.visual).__name__ == "ModifiedResNet", type(model.visual)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}))
    ckpt = folder / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), ckpt)
    del open_clip
    return ckpt


#: Widths of the tiny ViT + MiniLM default model of the tracing and merge tests.
TINY_DEFAULT = dict(width=16, layers=2, heads=2, embed_dim=16)


def tiny_clip_text_model():
    """A seeded open_clip ``CLIP`` (8-pixel ViT, 2-layer causal text transformer, CLIP BPE
    tokenizer), in eval mode, with its tokenizer: open_clip's own text tower for the tests that
    must cover both text-tower kinds."""
    import torch
    from open_clip.model import CLIP

    from ecif.data.encoders import open_clip_module

    open_clip = open_clip_module()
    torch.manual_seed(1)
    model = CLIP(embed_dim=12, vision_cfg={"image_size": 8, "patch_size": 4, "width": 16, "layers": 2, "head_width": 8},
                 text_cfg={"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2}).eval()
    model.visual.preprocess_cfg = {"size": 8, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)
