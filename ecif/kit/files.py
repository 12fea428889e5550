"""Files the pipeline writes and reads: metrics JSON and plot/table CSVs, deterministically.

``write_json`` sorts keys and turns numpy/torch values into plain Python numbers (stable diffs of
``metrics/*.json``); ``write_csv`` writes floats to 10 significant digits by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["read_json", "write_csv", "write_json"]


def _plain(obj: Any) -> Any:
    """JSON-friendly copy: numpy/torch scalars and arrays become Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON with sorted keys (stable diffs); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n")
    return path


def write_csv(frame, path: str | Path, **kwargs) -> Path:
    """Write a DataFrame as CSV (parent folders created, floats to 10 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("index", False)
    kwargs.setdefault("float_format", "%.10g")
    frame.to_csv(path, **kwargs)
    return path


def read_json(path: str | Path) -> dict:
    """The content of a JSON file (e.g. a metrics file written by :func:`write_json`)."""
    return json.loads(Path(path).read_text())
