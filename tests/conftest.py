import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tp():
    """The shared small synthetic problem of ``tiny_problem.py`` (fitted, with its engine)."""
    from tiny_problem import tiny_problem

    return tiny_problem()


@pytest.fixture(scope="module")
def test_set(tp):
    """Zero-shot evaluation set built from the tiny problem's clean validation pairs."""
    from ecif.experiments.zeroshot import ZeroShotSet

    d = tp.data
    return ZeroShotSet(d.x_val, d.class_text, d.labels_val)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a network connection: "fails fast" means the error comes
    from local checks, before any download is tried (checked without a clock)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def shapes_encoder_dir(tmp_path_factory) -> Path:
    """The trained shapes encoder: ``artifacts/encoder_shapes`` when the pipeline built it, else the
    same encoder trained here as the ``encoder_shapes`` stage does (embedded ``shapes``, seed 0,
    40 epochs; deterministic), so the tests that need a trained encoder run on a fresh clone."""
    built = Path(__file__).resolve().parents[1] / "artifacts" / "encoder_shapes"
    if (built / "encoder.safetensors").is_file():
        return built
    from ecif.data.datasets import load_dataset
    from ecif.data.encoders import train_default

    out = tmp_path_factory.mktemp("encoder_shapes")
    train_default(load_dataset("shapes"), seed=0, epochs=40, out_dir=out, progress=False)
    return out
