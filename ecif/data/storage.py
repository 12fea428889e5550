"""A data set on disk: ``meta.json`` and, per split, ``{split}_images.npy`` (uint8),
``{split}_index.npy``, ``{split}_attributes.csv`` and ``{split}_captions.json``. No pickle.

``python -m ecif.data.datasets write data/`` writes the embedded sets (the DVC-tracked ``data/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecif.data.embedded import digits, shapes
from ecif.data.pairs import TEMPLATE, CaptionSpec, Dataset, DatasetUnavailableError, Split


def save_dataset(ds: Dataset, folder: str | Path) -> Path:
    """Write ``ds`` to ``folder`` as .npy / .csv / .json files (no pickle); returns the folder."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": ds.name, "seed": ds.seed, "spec": ds.spec.to_json(), "info": ds.info, "splits": {}}
    for s, sp in ds.splits.items():
        np.save(folder / f"{s}_images.npy", sp.images)
        np.save(folder / f"{s}_index.npy", sp.index)
        table = pd.DataFrame({k: v for k, v in sp.attributes.items()})
        for a, vals in ds.spec.values.items():  # human-readable value next to each code
            table[f"{a}_name"] = np.asarray(vals, dtype=object)[sp.attributes[a]] if len(sp) else []
        table.insert(0, "index", sp.index)
        table.to_csv(folder / f"{s}_attributes.csv", index=False)
        (folder / f"{s}_captions.json").write_text(json.dumps(sp.captions, indent=0))
        meta["splits"][s] = len(sp)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_dataset(folder: str | Path) -> Dataset:
    """Read a data set written by :func:`save_dataset`."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise DatasetUnavailableError(f"no saved data set in {str(folder)!r} (meta.json missing); write one with `python -m ecif.data.datasets write <folder>` or `dvc pull`")
    meta = json.loads((folder / "meta.json").read_text())
    spec = CaptionSpec.from_json(meta["spec"])
    splits = {}
    for s in meta["splits"]:
        table = pd.read_csv(folder / f"{s}_attributes.csv")
        attrs = {k: table[k].to_numpy(np.int64) for k in list(spec.values) + [TEMPLATE] if k in table}
        labels = None if spec.label_attribute is None else attrs[spec.label_attribute]
        splits[s] = Split(
            images=np.load(folder / f"{s}_images.npy", allow_pickle=False),
            captions=json.loads((folder / f"{s}_captions.json").read_text()),
            attributes=attrs,
            index=np.load(folder / f"{s}_index.npy", allow_pickle=False),
            labels=labels,
            spec=spec,
        )
    return Dataset(name=meta["name"], splits=splits, spec=spec, seed=int(meta["seed"]), info=meta.get("info", {}))


def write_embedded(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write the embedded data sets (digits, shapes) with default splits to ``folder/<name>``."""
    return [save_dataset(digits(seed), Path(folder) / "digits"), save_dataset(shapes(seed), Path(folder) / "shapes")]
