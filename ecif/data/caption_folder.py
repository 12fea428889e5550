"""A user's own image-caption pairs: a folder of images plus ``captions.csv``.

``captions.csv`` has a header and the columns ``file,caption`` and, optionally, ``label``::

    file,caption,label
    img/0001.jpg,a red bicycle leaning on a wall,bicycle
    img/0002.jpg,my dog in the snow,dog

``file`` is relative to the folder. ``label`` (any text: a class name) is optional; without it
the data set is unlabelled: the pairs can be shuffled (``noise.kind: shuffle``), fitted,
scored and ranked, but there is no zero-shot classification (the stages that need it say so).
With labels, the zero-shot prompts are "a photo of a {label}.".

Captions are free text, so the caption spec has one attribute ``caption`` (its values are the
distinct captions) rendered by the template ``{caption}``; shuffling permutes it. The pairs are
split like the embedded sets: a seeded partition into pretrain / train / val / test.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ecif.data.pairs import TEMPLATE, CaptionSpec, Dataset, DatasetUnavailableError, build, partition, split_sizes
from ecif.data.tv_sets import read_image_files

PREFIX = "captions:"
CSV_NAME = "captions.csv"
REQUIRED_COLUMNS = ("file", "caption")
PROMPT = "a photo of a {label}."
DEFAULT_FRACTIONS = {"pretrain": 0.5, "train": 0.3, "val": 0.1, "test": 0.1}
DEFAULT_IMAGE_SIZE = 32

HOW = ("A caption folder holds the images and a file captions.csv with a header row and the columns "
       "file,caption[,label] (file relative to the folder; label optional); README \"Your own data\".")


def read_table(folder: str | Path) -> tuple[list[str], list[str], list[str] | None]:
    """(files, captions, labels or None) of ``folder/captions.csv``; checks every listed file exists.

    Raises:
        DatasetUnavailableError: no folder, no CSV, a missing column, an empty table, or image
            files the CSV names but the folder lacks (the first few are named).
    """
    folder = Path(folder)
    table = folder / CSV_NAME
    if not folder.is_dir():
        raise DatasetUnavailableError(f"caption folder {str(folder)!r} does not exist. {HOW}")
    if not table.is_file():
        raise DatasetUnavailableError(f"caption folder {str(folder)!r} has no {CSV_NAME}. {HOW}")
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetUnavailableError(
                f"{str(table)!r} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}). {HOW}")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise DatasetUnavailableError(f"{str(table)!r} lists no pairs. {HOW}")
    files = [r["file"] for r in rows]
    captions = [r["caption"] for r in rows]
    empty = [i + 2 for i, (f, c) in enumerate(zip(files, captions)) if not f or not c]
    if empty:
        raise DatasetUnavailableError(f"{str(table)!r}: empty file or caption on line(s) {empty[:5]}. {HOW}")
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        raise DatasetUnavailableError(
            f"{len(absent)} image file(s) named in {str(table)!r} are not in {str(folder)!r}: "
            f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}. Copy them there or remove their rows.")
    labels = None
    if "label" in columns:
        labels = [r.get("label", "") for r in rows]
        if any(not lab for lab in labels):
            raise DatasetUnavailableError(f"{str(table)!r}: the label column has empty cells; fill them or drop the "
                                          "column (labels are optional).")
    return files, captions, labels


def caption_folder(folder: str | Path, seed: int = 0, sizes: dict | None = None,
                   image_size: int | None = None, name: str | None = None) -> Dataset:
    """The pairs of a caption folder as a :class:`Dataset` (images uint8 (n, S, S, 3), S =
    ``image_size``, default 32). Split sizes: fractions or counts; default 0.5 / 0.3 / 0.1 / 0.1."""
    folder = Path(folder)
    files, captions, labels = read_table(folder)
    n = len(files)
    image_size = int(image_size or DEFAULT_IMAGE_SIZE)
    distinct = sorted(set(captions))
    attributes = {"caption": np.asarray([distinct.index(c) for c in captions], dtype=np.int64),
                  TEMPLATE: np.zeros(n, dtype=np.int64)}
    values = {"caption": distinct}
    label_attribute = prompt = None
    if labels is not None:
        classes = sorted(set(labels))
        values["label"] = classes
        attributes["label"] = np.asarray([classes.index(lab) for lab in labels], dtype=np.int64)
        label_attribute, prompt = "label", PROMPT
    spec = CaptionSpec(templates=("{caption}",), values=values, label_attribute=label_attribute, prompt_template=prompt)
    parts = partition(n, split_sizes(n, sizes, DEFAULT_FRACTIONS), seed)
    images = read_image_files([folder / f for f in files], image_size)
    return build(name or f"{PREFIX}{folder}", images, attributes, spec, parts, seed,
                 {"folder": str(folder), "image_size": image_size, "labelled": labels is not None})
