"""Image-caption data sets behind one interface: :func:`load_dataset` is the one entry point.

Every data set is a :class:`~ecif.data.pairs.Dataset` with four disjoint splits (``pretrain``,
``train``, ``val``, ``test``) and a caption spec (:mod:`ecif.data.pairs`). Names (the values of
``common.dataset``):

- ``digits``, ``shapes``: embedded (:mod:`ecif.data.embedded`); read from the DVC-tracked copy
  ``<root>/<name>`` (:mod:`ecif.data.storage`) when it is there and the defaults are asked for,
  else built in memory;
- ``cifar10``, ``cifar100``, ``food101``, ``flowers102``, ``fgvc_aircraft``, ``dtd``: the paper's
  sets in torchvision's on-disk format under ``<root>/<name>`` (or ``<root>`` itself), never
  downloaded (:mod:`ecif.data.tv_sets`);
- ``captions:<folder>``: a folder of images plus ``captions.csv`` (``file,caption[,label]``), the
  folder relative to ``root`` or to the working directory, or absolute (:mod:`ecif.data.caption_folder`).

:func:`check_available` says in a fraction of a second whether a name's files are there
(:class:`DatasetUnavailableError` naming what is missing, where it looked, how to provide it);
the pipeline calls it before the first stage that reads the data starts its notebook.

``python -m ecif.data.datasets write data/`` writes the embedded sets for DVC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ecif.data.caption_folder import PREFIX as CAPTIONS_PREFIX
from ecif.data.caption_folder import caption_folder, read_table
from ecif.data.embedded import EMBEDDED, digits, shapes
from ecif.data.pairs import SPLITS, TEMPLATE, CaptionSpec, Dataset, DatasetUnavailableError, Split
from ecif.data.storage import read_dataset, save_dataset, write_embedded
from ecif.data.tv_sets import TORCHVISION, check_present, missing_files, resize_images, torchvision_dataset

__all__ = ["SPLITS", "TEMPLATE", "EMBEDDED", "TORCHVISION", "CAPTIONS_PREFIX", "CaptionSpec", "Dataset",
           "DatasetUnavailableError", "Split", "caption_folder", "check_available", "digits", "is_labelled",
           "load_dataset", "read_dataset", "resolve", "save_dataset", "shapes", "torchvision_dataset",
           "write_embedded"]


def resolve(name: str, root: str | Path | None) -> tuple[str, Path | None]:
    """(kind, folder) of a data set name: kind is ``embedded``, ``torchvision`` or ``captions``;
    the folder is where its files are looked for (``None``: nowhere to look).

    Raises:
        ValueError: an unknown name.
        DatasetUnavailableError: a torchvision set or caption folder whose folder is not there.
    """
    if name.startswith(CAPTIONS_PREFIX):
        rel = name[len(CAPTIONS_PREFIX):].strip()
        if not rel:
            raise ValueError(f"{name!r}: give the folder after '{CAPTIONS_PREFIX}', e.g. 'captions:my_pairs'")
        tried = [Path(root) / rel] if root is not None and not Path(rel).is_absolute() else []
        tried.append(Path(rel))
        for folder in tried:
            if folder.is_dir():
                return "captions", folder
        raise DatasetUnavailableError(
            f"caption folder {rel!r} not found (looked in {', '.join(repr(str(t)) for t in tried)}). Put the images and "
            "captions.csv (columns file,caption[,label]) in a folder under common.data_root, or give an absolute path.")
    key = name.lower()
    if key in EMBEDDED:
        return "embedded", None if root is None else Path(root) / key
    if key in TORCHVISION:
        if root is None:
            return "torchvision", None
        candidates = [Path(root) / key, Path(root)]
        for folder in candidates:
            if not missing_files(key, folder):
                return "torchvision", folder
        return "torchvision", candidates[0]
    raise ValueError(f"unknown data set {name!r}; choose from {EMBEDDED + TORCHVISION} or 'captions:<folder>'")


def check_available(name: str, root: str | Path | None) -> None:
    """Raise :class:`DatasetUnavailableError` (what is missing, where, how to provide it) unless the
    files of ``name`` are under ``root``. Reads only file names (and a caption folder's CSV): fast."""
    kind, folder = resolve(name, root)
    if kind == "torchvision":
        if folder is None:
            torchvision_dataset(name.lower(), None)  # raises with the hint
        check_present(name.lower(), folder)
    elif kind == "captions":
        read_table(folder)


def is_labelled(name: str, root: str | Path | None) -> bool:
    """Whether the data set has class labels (a caption folder only with a ``label`` column)."""
    kind, folder = resolve(name, root)
    return kind != "captions" or read_table(folder)[2] is not None


def load_dataset(name: str, seed: int = 0, sizes: dict | None = None, root: str | Path | None = None,
                 image_size: int | None = None, **kwargs) -> Dataset:
    """Any supported data set by name (see the module docstring).

    ``sizes``: pairs per split (counts, or fractions <= 1; ``None``: the set's defaults);
    ``image_size``: side S of the stored uint8 images (``None``: the set's own, digits 8, shapes
    32, real sets 32). The embedded sets are read from ``root/<name>`` (written by
    :func:`save_dataset`) when ``sizes``, ``image_size`` and ``seed`` are the defaults.

    Raises:
        DatasetUnavailableError: the files are not there (at once, before reading images).
        ValueError: an unknown name, or split sizes the data set cannot fill.
    """
    kind, folder = resolve(name, root)
    if kind == "embedded":
        key = name.lower()
        if sizes is None and image_size is None and seed == 0 and not kwargs and folder is not None \
                and (folder / "meta.json").exists():
            return read_dataset(folder)
        if key == "digits":
            ds = digits(seed, sizes)
            if image_size is not None:
                for sp in ds.splits.values():
                    sp.images = resize_images(sp.images, int(image_size))
            return ds
        return shapes(seed, sizes, image_size=int(image_size or 32), **kwargs)
    if kind == "torchvision":
        return torchvision_dataset(name.lower(), folder, seed, sizes, image_size=image_size)
    return caption_folder(folder, seed, sizes, image_size=image_size, name=name)


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.data.datasets write data/``: write the embedded raw data for DVC."""
    p = argparse.ArgumentParser(prog="python -m ecif.data.datasets", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the embedded data sets (digits, shapes) to a folder")
    w.add_argument("folder")
    w.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for f in write_embedded(args.folder, args.seed):
        print(f"wrote {f}")


if __name__ == "__main__":
    main()
