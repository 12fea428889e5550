"""The schema of ``params.yaml``: every group and key, its type, range or allowed values.

Checked in well under a second, before any stage runs, so a bad value costs nothing:

- ``dvc repro`` runs stage ``check_params`` first (``python -m ecif.kit.params check``); every
  other stage depends on its marker file, so an invalid ``params.yaml`` stops the pipeline
  before DVC deletes any stage's previous outputs;
- ``python -m ecif.kit.notebook_runner`` checks the values it is about to inject (after
  ``--override``) and refuses to execute a notebook with an invalid one.

Each problem is reported with the key, the bad value, what is allowed and how to fix it::

    params.yaml: noise.rate = 1.5 is out of range: must be > 0 and < 1 (fraction of train pairs made misaligned).
      Fix: set noise.rate to a value in that range, e.g. 0.2.

Command line::

    python -m ecif.kit.params check [--params params.yaml] [--ok-file FILE]   # exit 0 valid, 2 not
    python -m ecif.kit.params show                                            # the schema, as a table

The ``--ok-file`` content is fixed: it does not change when valid parameters change, so the
stages depending on it rerun only for their own parameters. This module imports nothing heavy
(no torch): the whole check takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ecif.data.encoder_spec import EXAMPLES as ENCODER_EXAMPLES
from ecif.data.encoder_spec import EncoderSpec
from ecif.experiments.scheduler_spec import ENV_VAR, FORMS, scheduler_problem

# Kept equal to ecif.data (datasets.EMBEDDED + TORCHVISION, noise.KINDS) by tests/kit/test_params.py;
# written out here so that the check does not import torch.
EMBEDDED_DATASETS = ("digits", "shapes")
TORCHVISION_DATASETS = ("cifar10", "cifar100", "food101", "flowers102", "fgvc_aircraft", "dtd")
DATASETS = EMBEDDED_DATASETS + TORCHVISION_DATASETS
CAPTIONS_PREFIX = "captions:"  # common.dataset = captions:<folder>: a user's own pairs (ecif.data.caption_folder)
SPLIT_NAMES = ("pretrain", "train", "val", "test")
COMPOSITIONAL_DATASETS = ("shapes",)  # captions built from several attributes: attribute swaps need them
NOISE_KINDS = ("shuffle", "label_flip", "attribute_swap")
GRID_KINDS = NOISE_KINDS + ("systematic_swap",)  # systematic_swap = attribute_swap, the same swap everywhere
#: The peers of stage peers (ecif.experiments.peers.PEERS; this module imports no torch).
PEER_NAMES = ("kronfluence_ekfac", "kronfluence_kfac", "kronfluence_identity", "dattri_cg", "dattri_explicit", "trak")
FIT_METHODS = ("newton", "newton-cg", "auto")
DEVICES = ("cpu", "cuda")
VISUAL_SHIFTS = ("blur", "noise", "dropout")  # ecif.data.shifts.VISUAL
TEXT_SHIFTS = ("typo", "synonym", "token_dropout", "retemplate")  # ecif.data.shifts.TEXT

OK_TEXT = "ok: params.yaml passed the schema check of ecif/kit/params.py\n"


class ParamsError(ValueError):
    """Invalid parameters; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str], source: str = "params.yaml") -> None:
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"{source}: {n} invalid parameter{'s' if n != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


# ----------------------------------------------------------------------------------- specs


def _show(value: Any) -> str:
    """A value as written in params.yaml (null, true, 1.0e-09, [64, null]); text quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return yaml.safe_dump(value).split("\n")[0]
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


@dataclass(frozen=True)
class Spec:
    """What one key may hold.

    ``type``: ``int``, ``float`` (ints accepted), ``str``, ``choice`` or ``list`` (of ``item``);
    ``gt``/``ge``/``lt``/``le``: bounds of a number; ``choices``: the allowed values;
    ``nullable``: ``null`` allowed (``null_means`` says what it does); ``example``: a valid
    value for the fix; ``min_len``/``unique``: for lists.
    """

    type: str
    meaning: str
    example: Any = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple = ()
    nullable: bool = False
    null_means: str = ""
    item: Spec | None = None
    min_len: int = 1
    unique: bool = False
    hint: str = ""  # an extra sentence for the fix, e.g. why a bound is strict
    validator: Callable[[Any], str | None] | None = None  # a further check of a well-typed value
    prefixes: tuple = ()  # choice: also any text '<prefix><something>' (captions:<folder>)

    def allowed(self) -> str:
        """The allowed values in words: 'an integer >= 1 or null (one full batch)'."""
        if self.type == "choice":
            text = "one of " + ", ".join(map(str, self.choices)) + "".join(f" or {p}<folder>" for p in self.prefixes)
        elif self.type == "splits":
            text = "a mapping of split sizes (" + ", ".join(f"{s}: count" for s in SPLIT_NAMES) + ")"
        elif self.type == "list":
            text = f"a list of {'unique ' if self.unique else ''}values, at least {self.min_len}, each " + (
                self.item.allowed() if self.item else "any")
        else:
            text = {"int": "an integer", "float": "a number", "str": "a text", "bool": "true or false"}[self.type]
            bounds = [f"{op} {b:g}" for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                      if b is not None]
            if bounds:
                text += " " + " and ".join(bounds)
        if self.nullable:
            text += f" or null ({self.null_means})" if self.null_means else " or null"
        return text

    def problem(self, value: Any) -> str | None:
        """None if ``value`` fits, else what is wrong (without the key)."""
        if value is None:
            return None if self.nullable else "is null"
        if self.type == "int":
            if not _is_int(value):
                return f"has the wrong type ({type(value).__name__})"
        elif self.type == "float":
            if isinstance(value, str):
                try:
                    float(value)
                except ValueError:
                    pass
                else:  # PyYAML reads 1e-9 (no dot) as a string
                    return ("is a string, not a number (YAML reads an exponent without a dot, like 1e-9, as "
                            "text: write 1.0e-9)")
            if not _is_number(value):
                return f"has the wrong type ({type(value).__name__})" if not _is_number(value) and not isinstance(
                    value, float) else "is not finite"
        elif self.type == "bool":
            if not isinstance(value, bool):
                return f"has the wrong type ({type(value).__name__}, not true/false)"
        elif self.type == "str":
            if not isinstance(value, str) or not value.strip():
                return f"has the wrong type ({type(value).__name__})" if not isinstance(value, str) else "is empty"
        elif self.type == "choice":
            if isinstance(value, str) and any(value.startswith(p) for p in self.prefixes):
                return None if value.split(":", 1)[1].strip() else "names no folder after the prefix"
            if value not in self.choices:
                close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
                return "is not an allowed value" + (f" (did you mean {close[0]}?)" if close else "")
        elif self.type == "splits":
            if not isinstance(value, dict):
                return f"has the wrong type ({type(value).__name__}, not a mapping)"
            unknown = [k for k in value if k not in SPLIT_NAMES]
            if unknown:
                return f"names unknown split(s) {', '.join(map(str, unknown))}"
            bad = [k for k, v in value.items() if not (_is_int(v) and v >= 0)]
            if bad:
                return f"has a size that is not an integer >= 0 ({bad[0]}: {_show(value[bad[0]])})"
            if not (_is_int(value.get("train")) and value["train"] >= 2):
                return "has fewer than 2 train pairs"
            return None
        elif self.type == "list":
            if not isinstance(value, list):
                return f"has the wrong type ({type(value).__name__}, not a list)"
            if len(value) < self.min_len:
                return f"has {len(value)} item(s), fewer than {self.min_len}"
            for i, item in enumerate(value):
                bad = self.item.problem(item) if self.item else None
                if bad:
                    return f"has an invalid item {i} ({_show(item)}: {bad})"
            if self.unique:
                seen = [v for i, v in enumerate(value) if v in value[:i]]
                if seen:
                    return f"repeats {_show(seen[0])}"
            return None
        if self.type in ("int", "float"):
            v = float(value)
            if ((self.gt is not None and not v > self.gt) or (self.ge is not None and not v >= self.ge)
                    or (self.lt is not None and not v < self.lt) or (self.le is not None and not v <= self.le)):
                return "is out of range"
        if self.validator is not None:
            return self.validator(value)
        return None


def Int(meaning: str, example: int, *, ge: int | None = None, gt: int | None = None, **kw) -> Spec:
    return Spec("int", meaning, example, ge=ge, gt=gt, **kw)


def Num(meaning: str, example: float, **kw) -> Spec:
    return Spec("float", meaning, example, **kw)


def Choice(meaning: str, choices: tuple, example: Any = None, **kw) -> Spec:
    return Spec("choice", meaning, choices[0] if example is None else example, choices=tuple(choices), **kw)


def Flag(meaning: str, example: bool, **kw) -> Spec:
    return Spec("bool", meaning, example, **kw)


def Text(meaning: str, example: str, **kw) -> Spec:
    return Spec("str", meaning, example, **kw)


def ListOf(meaning: str, item: Spec, example: list, *, unique: bool = False, min_len: int = 1) -> Spec:
    return Spec("list", meaning, example, item=item, unique=unique, min_len=min_len)


SEED = dict(ge=0)  # numpy's generators refuse negative seeds


def _encoder_form(value: Any) -> str | None:
    """None if ``value`` is a well-formed ``common.encoder`` (no file is looked at here)."""
    try:
        EncoderSpec.parse(value)
    except ValueError as exc:
        return f"is not a valid encoder value ({str(exc).split(' (forms:')[0]})"
    return None


SCHEDULER_FORMS, SCHEDULER_ENV = FORMS, ENV_VAR


def _scheduler_form(value: Any) -> str | None:
    """None if ``value`` is a well-formed ``common.scheduler`` (nothing is contacted here)."""
    return scheduler_problem(value)


ENCODER_MEANING = ("frozen CLIP encoder: embedded (trained by the encoder stage), ARCH:TAG (open_clip pretrained "
                   "tag, local cache only), ARCH:PATH (local checkpoint) or PATH (folder with open_clip_config.json "
                   "and weights)")
LAM_HINT = ("lam is the L2 pull (lam/2)||theta - theta0||^2 that makes the fit's optimum strict; a strict minimum "
            "(positive definite Hessian, the influence solve) needs lam > 0, and values near 1/n make the fit "
            "nearly singular: 0.1 is the digits default")

#: group -> key -> Spec. Every key of these groups must be present in params.yaml.
SCHEMA: dict[str, dict[str, Spec]] = {
    "common": {
        "dataset": Choice("data set of the core stages", DATASETS, "digits", prefixes=(CAPTIONS_PREFIX,)),
        "data_root": Text("folder of the raw data (embedded sets, torchvision folders, caption folders)", "data"),
        "split_sizes": Spec("splits", "pairs per split of the core stages' data set (real sets: a subsample with a fixed seed)",
                            {"pretrain": 5000, "train": 1000, "val": 500, "test": 1000}, nullable=True,
                            null_means="the data set's defaults"),
        "image_size": Int("side of the stored square images", 32, ge=4, nullable=True,
                          null_means="the data set's own: digits 8, shapes 32, real sets 32"),
        "seed": Int("seed of encoder init, LoRA init, batching, LOO sample, random baseline", 0, **SEED),
        "threads": Int("torch CPU threads", 1, ge=1),
        "encoder": Text(ENCODER_MEANING, "embedded", validator=_encoder_form,
                        hint="examples: " + ", ".join(ENCODER_EXAMPLES)),
        "device": Choice("torch device of the feature extraction, the fit and the influence computations "
                         "(float64; later stages use the fit's device)", DEVICES),
        "scheduler": Text("where the leave-one-out refits run (Dask): local = a LocalCluster, one worker per core; "
                          "local:N = N workers; tcp://host:port = a running Dask scheduler", "local",
                          nullable=True, null_means="serial, in the stage's own process",
                          validator=_scheduler_form, hint=f"the environment variable {SCHEDULER_ENV} overrides it"),
    },
    "noise": {
        "kind": Choice("how train pairs are made misaligned", NOISE_KINDS),
        "rate": Num("fraction of train pairs made misaligned", 0.2, gt=0, lt=1),
        "seed": Int("which pairs are corrupted, and how", 0, **SEED),
        "n_gallery": Int("pairs shown in the gallery figure", 12, ge=1),
    },
    "encoder": {
        "epochs": Int("training epochs of the default encoder", 40, ge=1),
    },
    "finetune": {
        "rank": Int("LoRA rank", 1, ge=1),
        "lam": Num("L2 pull towards the start", 0.1, gt=0, hint=LAM_HINT),
        "batch_size": Int("size of the fixed batches of the contrastive loss", 64, ge=2, nullable=True,
                          null_means="one full batch"),
        "gtol": Num("gradient norm the fit must reach", 1.0e-9, gt=0),
        "max_iter": Int("Newton steps at most", 100, ge=1),
        "method": Choice("optimiser of the fit", FIT_METHODS, "newton-cg"),
        "n_train": Int("use only the first n train pairs", 120, ge=2, nullable=True, null_means="all"),
        "centre": Flag("subtract the pretrain split's feature means inside the frozen map (docs/math.md §13)",
                       True, hint="true for pretrained CLIP features (a large shared direction); the embedded "
                       "encoder was trained on uncentred features"),
        "mode": Choice("where the LoRA adapters sit: head = the two final projections over frozen pooled features; "
                       "blocks = also inside the last finetune.blocks transformer blocks of both towers", ("head", "blocks"),
                       "head"),
        "blocks": Int("transformer blocks adapted per tower (finetune.mode: blocks)", 1, ge=0),
        "targets": ListOf("matrices adapted in each block (finetune.mode: blocks): attn = q, k, v, o; qv = q and v "
                          "only; mlp = the two MLP layers", Choice("a target group", ("attn", "qv", "mlp"), "qv"),
                          ["qv"], unique=True),
    },
    "loo": {
        "n_pairs": Int("pairs retrained without (leave-one-out ground truth)", 40, ge=2),
        "n_misaligned": Int("how many of the LOO pairs are misaligned", 10, ge=0),
        "gtol": Num("gradient norm every refit must reach", 1.0e-9, gt=0),
    },
    "detect": {},
    "peers": {
        "methods": ListOf("established influence libraries scored on the LOO ground truth (ecif/experiments/peers.py)",
                          Choice("peer", PEER_NAMES), ["kronfluence_ekfac", "dattri_cg"], unique=True),
        "cg_max_iter": Int("conjugate-gradient iterations of dattri_cg", 50, ge=1),
        "batch_size": Int("training examples per kronfluence / TRAK batch", 64, ge=1),
        "track_logit_scale": Flag("kronfluence tracks the logit scale (as a 1 -> 1 linear map)", True,
                                  hint="false: only the four LoRA factors, as kronfluence sees a bare logit_scale"),
        "trak_proj_dim": Int("TRAK's projection dimension (its default; k >= P keeps the whole gradient)", 2048, ge=1),
        "trak_checkpoints": Int("TRAK's checkpoints: 1 = theta_hat, more = refits on random halves", 1, ge=1),
    },
    "detection_grid": {
        "kinds": ListOf("misalignment kinds of the sweep", Choice("kind", GRID_KINDS), ["shuffle"], unique=True),
        "rates": ListOf("noise rates of the sweep", Num("rate", 0.2, gt=0, lt=1), [0.2], unique=True),
        "seeds": ListOf("noise seeds of the sweep", Int("seed", 0, **SEED), [0], unique=True),
    },
    "detection_cell": {
        "dataset": Choice("data set of the sweep (attribute swaps need a compositional one)", COMPOSITIONAL_DATASETS),
        "encoder_dir": Text("frozen encoder of the sweep's data set", "artifacts/encoder_shapes"),
    },
    "ablation": {
        "dampings": ListOf("damping values mu of the sweep", Num("damping", 0.01, ge=0), [0.0, 0.01]),
        "lams": ListOf("lam values of the sweep (each refits)", Num("lam", 0.1, gt=0, hint=LAM_HINT), [0.1]),
        "batch_sizes": ListOf("batch sizes of the sweep, the first is the reference",
                              Int("batch size", 64, ge=2, nullable=True, null_means="one full batch"), [64, None],
                              unique=True),
        "n_pairs": Int("leave-one-out sample of the lam and batch-size sweeps", 16, ge=2),
        "n_misaligned": Int("how many of them are misaligned", 4, ge=0),
    },
    "cleaning": {
        "setting": Choice("where the cleaning experiment runs", ("shapes_swap", "pipeline"),
                          hint="pipeline: the fit of stages finetune and detect"),
        "dataset": Choice("data set of the shapes_swap setting (attribute swaps need attributes)",
                          COMPOSITIONAL_DATASETS),
        "encoder_dir": Text("frozen encoder of the shapes_swap setting", "artifacts/encoder_shapes"),
        "attribute": Choice("attribute swapped systematically (shapes_swap); accuracy is on the shape classes",
                            ("shape", "color", "size", "position")),
        "rate": Num("share of train pairs corrupted (shapes_swap)", 0.2, gt=0, lt=1),
        "noise_seeds": ListOf("noise seeds of the shapes_swap setting, one fit each", Int("seed", 0, **SEED), [0, 1, 2],
                              unique=True),
        "lam": Num("L2 pull of the shapes_swap fits (over finetune.lam)", 0.03, gt=0),
        "fraction": Num("share of train pairs removed (Table 1 and the edit sets)", 0.1, gt=0, lt=1),
        "fractions": ListOf("shares removed for the removal-fraction curve",
                            Num("fraction", 0.1, gt=0, lt=1), [0.05, 0.1, 0.2], unique=True),
        "random_seeds": ListOf("seeds of the random deletions", Int("seed", 0, **SEED), [0, 1, 2], unique=True),
    },
    "traceback": {
        "n_items": Int("mispredicted test items checked", 6, ge=1),
        "order": Choice("which mispredicted items: closest to the boundary first, or most confidently wrong first",
                        ("least_confident", "most_confident")),
        "ks": ListOf("numbers of culprits removed", Int("k", 5, ge=1), [5, 10], unique=True),
        "n_random": Int("random removals per item and k", 3, ge=1),
        "n_gallery": Int("items shown in the gallery", 4, ge=1),
        "top": Int("traced pairs shown per item", 4, ge=1),
    },
    "summary": {},
    "tracing": {
        "dataset": Choice("data set traced and repaired (slots need attributes)", COMPOSITIONAL_DATASETS),
        "encoder_dir": Text("frozen encoder traced and repaired", "artifacts/encoder_shapes"),
        "attributes": ListOf("caption slots traced", Choice("attribute", ("shape", "color", "size", "position")),
                             ["color", "shape"], unique=True),
        "n_examples": Int("test items traced per attribute", 16, ge=1),
        "window": Int("layers restored together in the window traces", 3, ge=1),
        "repair_attribute": Choice("attribute swapped systematically, then repaired",
                                   ("shape", "color", "size", "position")),
        "rate": Num("share of train captions swapped", 0.2, gt=0, lt=1),
        "noise_seeds": ListOf("noise seeds, one fit and repair table each", Int("seed", 0, **SEED), [0, 1, 2],
                              unique=True),
        "lam": Num("L2 pull of the swap fits", 0.03, gt=0),
        "layer": Int("text layer edited", 3, ge=0, nullable=True, null_means="where the trace points"),
        "ridge": Num("ridge of the closed-form edit", 1.0, gt=0),
        "steps": Int("gradient steps that find the edit's target value", 30, ge=1),
        "n_fix": Int("correctly captioned pairs of the finetune repair", 16, ge=2),
        "fraction": Num("share of train pairs removed by ecif_top_k", 0.1, gt=0, lt=1),
        "block_fits": Flag("also fit block-mode adapters on clean and on swapped captions and trace both "
                           "(where the misalignment lives; a few minutes)", True,
                           hint="false skips the two block fits: the metrics then have no tracing.block group"),
        "block_attribute": Choice("attribute swapped systematically in the block fits, and traced",
                                  ("shape", "color", "size", "position")),
        "block_rate": Num("share of train captions swapped in the block fits", 0.3, gt=0, lt=1),
        "block_n_train": Int("train pairs of each block fit (the first ones; each fit's cost grows with it)", 30, ge=4),
    },
    "hard_negatives": {
        "dataset": Choice("data set of the hard-negative batching study", COMPOSITIONAL_DATASETS),
        "encoder_dir": Text("frozen encoder of that data set", "artifacts/encoder_shapes"),
        "kind": Choice("how train pairs are made misaligned", NOISE_KINDS),
        "rate": Num("share of train pairs made misaligned", 0.2, gt=0, lt=1),
        "noise_seed": Int("seed of the corruption", 0, **SEED),
        "degrade": Choice("how the image is hidden before the model picks its preferred captions", ("blur", "mask")),
        "strength": Num("blur sigma in pixels, or share of patches blanked", 2.0, gt=0),
        "patch": Int("patch side in pixels (mask)", 4, ge=1),
        "n_hard": Int("hard negatives mined per pair", 8, ge=1),
        "n_pairs": Int("leave-one-out refits per batching", 40, ge=3),
        "n_misaligned": Int("how many of them are misaligned", 10, ge=0),
    },
    "emi": {
        "dataset": Choice("data set of the EMI stage (re-templating and systematic swaps need attributes)",
                          COMPOSITIONAL_DATASETS),
        "encoder_dir": Text("frozen backbone of the models under test", "artifacts/encoder_shapes"),
        "embedder": Choice("embeddings of the estimators", ("fixed", "reference")),
        "pool": Int("pooled image side of the fixed embedder", 4, ge=1),
        "ridge": Num("ridge of the linear-Gaussian CLUB fits", 0.01, gt=0),
        "bound_form": Choice("form of the EMID bound", ("scale_adjusted", "theoretical")),
        "visual": ListOf("visual test-time shifts", Choice("shift", VISUAL_SHIFTS), ["blur"], unique=True),
        "text": ListOf("text test-time shifts", Choice("shift", TEXT_SHIFTS), ["typo"], unique=True),
        "levels": ListOf("shift levels", Int("level", 1, ge=1, le=3), [1, 2, 3], unique=True),
        "joint": ListOf("joint (visual, text) shift scenarios",
                        ListOf("a visual and a text shift", Choice("shift", VISUAL_SHIFTS + TEXT_SHIFTS),
                               ["blur", "typo"], unique=True), [["blur", "typo"]], min_len=0),
        "joint_level": Int("level of the joint shifts", 2, ge=1, le=3),
        "shift_seeds": ListOf("seeds of the shift grid", Int("seed", 0, **SEED), [0], unique=True),
        "n_boot": Int("bootstrap resamples of the correlation intervals", 1000, ge=10),
        "kinds": ListOf("misalignment kinds of experiment B", Choice("kind", ("shuffle", "systematic_swap")),
                        ["shuffle"], unique=True),
        "rates": ListOf("misalignment rates of experiment B (0: the clean fit)", Num("rate", 0.1, ge=0, lt=1),
                        [0.0, 0.2], unique=True),
        "noise_seeds": ListOf("noise seeds of experiment B (which pairs are corrupted; one fit per seed)",
                              Int("seed", 0, **SEED), [0], unique=True),
    },
}

#: Optional top-level groups (the runner's notebook map: stage -> notebook name).
OPTIONAL_GROUPS = ("notebooks",)

#: Notebook parameters set by ``--override`` in dvc.yaml rather than by a params.yaml key.
OVERRIDES: dict[str, Spec] = {
    "kind": Choice("misalignment kind of a sweep cell", GRID_KINDS),
    "rate": Num("noise rate of a sweep cell", 0.2, gt=0, lt=1),
    "noise_seed": Int("noise seed of a sweep cell", 0, **SEED),
    "dataset": Choice("data set", DATASETS, "digits", prefixes=(CAPTIONS_PREFIX,)),
}


@dataclass
class _Cross:
    keys: tuple[str, ...]
    test: Callable[[dict], str | None]


def _group(params: dict, name: str) -> dict:
    value = params.get(name)
    return value if isinstance(value, dict) else {}


def _misaligned_within(group: str) -> Callable[[dict], str | None]:
    def test(params: dict) -> str | None:
        g = _group(params, group)
        n, m = g.get("n_pairs"), g.get("n_misaligned")
        if _is_int(n) and _is_int(m) and m > n:
            return (f"{group}.n_misaligned = {m} is larger than {group}.n_pairs = {n}: the misaligned pairs are "
                    f"part of the sample. Fix: set {group}.n_misaligned to at most {n}, or raise {group}.n_pairs.")
        return None
    return test


def _swap_needs_compositional(params: dict) -> str | None:
    kind, dataset = _group(params, "noise").get("kind"), _group(params, "common").get("dataset")
    if kind == "attribute_swap" and dataset in DATASETS and dataset not in COMPOSITIONAL_DATASETS:
        return (f"noise.kind = 'attribute_swap' needs a data set whose captions are built from attributes, but "
                f"common.dataset = {dataset!r}. Fix: set common.dataset to one of {', '.join(COMPOSITIONAL_DATASETS)}, "
                "or noise.kind to shuffle or label_flip.")
    return None


def _captions_only_shuffle(params: dict) -> str | None:
    kind, dataset = _group(params, "noise").get("kind"), _group(params, "common").get("dataset")
    if isinstance(dataset, str) and dataset.startswith(CAPTIONS_PREFIX) and kind in ("label_flip", "attribute_swap"):
        return (f"noise.kind = {kind!r} rewrites a caption from its label or attributes, but the captions of "
                f"common.dataset = {dataset!r} are free text (a caption folder). Fix: set noise.kind to shuffle.")
    return None


#: The smallest L2 pull a block-mode fit is allowed (finetune.mode: blocks): at 0.1 the adapters
#: inside the encoder keep fitting the corrupted captions and Newton-CG does not converge in 100
#: steps on the digits pipeline; at 0.3 it converges in about 10 (README "Adapters inside the encoder").
BLOCK_MODE_MIN_LAM = 0.3


def _block_mode_settings(params: dict) -> str | None:
    f = _group(params, "finetune")
    if f.get("mode") != "blocks":
        return None
    lam = f.get("lam")
    if _is_number(lam) and lam < BLOCK_MODE_MIN_LAM:
        return (f"finetune.lam = {lam} is below {BLOCK_MODE_MIN_LAM}, the smallest L2 pull with which block-mode fits "
                f"(finetune.mode: blocks) converge. Fix: finetune.lam: {BLOCK_MODE_MIN_LAM} (or larger), or "
                "finetune.mode: head.")
    return _block_mode_centre_targets(f)


def _block_mode_cleaning_lam(params: dict) -> str | None:
    c = _group(params, "cleaning")
    lam = c.get("lam")
    if (_group(params, "finetune").get("mode") == "blocks" and c.get("setting", "shapes_swap") == "shapes_swap"
            and _is_number(lam) and lam < BLOCK_MODE_MIN_LAM):
        return (f"cleaning.lam = {lam} is below {BLOCK_MODE_MIN_LAM}, the smallest L2 pull with which block-mode fits "
                f"(finetune.mode: blocks) converge; the shapes_swap setting fits with cleaning.lam. Fix: cleaning.lam: "
                f"{BLOCK_MODE_MIN_LAM} (or larger), or cleaning.setting: pipeline (the fit of stage finetune).")
    return None


def _block_mode_ablation_lams(params: dict) -> str | None:
    lams = _group(params, "ablation").get("lams")
    if _group(params, "finetune").get("mode") != "blocks" or not isinstance(lams, list):
        return None
    low = [v for v in lams if _is_number(v) and v < BLOCK_MODE_MIN_LAM]
    if low:
        keep = [v for v in lams if v not in low] or [BLOCK_MODE_MIN_LAM, 1.0]
        return (f"ablation.lams holds {low}, below {BLOCK_MODE_MIN_LAM}, the smallest L2 pull with which block-mode "
                f"fits (finetune.mode: blocks) converge: each would run up to 200 Newton steps and score a "
                f"non-optimum. Fix: ablation.lams: {keep} (values >= {BLOCK_MODE_MIN_LAM}), or finetune.mode: head.")
    return None


def _block_mode_centre_targets(f: dict) -> str | None:
    targets = f.get("targets") or []
    if isinstance(targets, list) and "attn" in targets and "qv" in targets:
        return ("finetune.targets lists both attn and qv, but attn already adapts q and v. Fix: keep one of them, "
                "e.g. finetune.targets: [qv].")
    if f.get("centre") is True:
        return ("finetune.centre: true shifts pooled features, but finetune.mode: blocks adapts token activations "
                "inside the encoder, where a shift would change the model. Fix: finetune.centre: false.")
    return None


CROSS_CHECKS = (
    _Cross(("finetune.mode", "finetune.targets", "finetune.centre", "finetune.lam"), _block_mode_settings),
    _Cross(("finetune.mode", "cleaning.setting", "cleaning.lam"), _block_mode_cleaning_lam),
    _Cross(("finetune.mode", "ablation.lams"), _block_mode_ablation_lams),
    _Cross(("loo.n_pairs", "loo.n_misaligned"), _misaligned_within("loo")),
    _Cross(("ablation.n_pairs", "ablation.n_misaligned"), _misaligned_within("ablation")),
    _Cross(("noise.kind", "common.dataset"), _swap_needs_compositional),
    _Cross(("noise.kind", "common.dataset"), _captions_only_shuffle),
)


# ------------------------------------------------------------------------------- checking


def value_problem(key: str, value: Any, spec: Spec) -> str | None:
    """The message for ``key = value`` if it breaks ``spec``, else None."""
    bad = spec.problem(value)
    if bad is None:
        return None
    fix = f"Fix: set {key} to {spec.allowed()}"
    if spec.example is not None or spec.type == "list":
        fix += f", e.g. {_show(spec.example)}"
    fix += "."
    if spec.hint:
        fix += f" ({spec.hint}.)"
    return f"{key} = {_show(value)} {bad}: must be {spec.allowed()} ({spec.meaning}). {fix}"


def validate(params: Any, schema: dict[str, dict[str, Spec]] | None = None) -> list[str]:
    """Every problem of a whole parameters mapping (empty list: valid)."""
    schema = SCHEMA if schema is None else schema
    if not isinstance(params, dict):
        return [f"the file must hold a mapping of groups (common:, noise:, ...), got {type(params).__name__}"]
    problems: list[str] = []
    known = list(schema) + list(OPTIONAL_GROUPS)
    for group in params:
        if group not in known:
            close = difflib.get_close_matches(str(group), known, n=1)
            problems.append(
                f"unknown group {group!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f". Fix: rename it to one of the groups ({', '.join(schema)}) or remove it."
            )
    for group, keys in schema.items():
        if group not in params:
            problems.append(f"group {group!r} is missing. Fix: add it back"
                            + (f" with its keys ({', '.join(keys)})." if keys else " (as `{}`: it has no keys)."))
            continue
        values = params[group]
        if values is None:
            values = {}
        if not isinstance(values, dict):
            problems.append(f"group {group} = {_show(values)} must be a mapping of keys"
                            + (f" ({', '.join(keys)})" if keys else " (here: `{}`)") + ".")
            continue
        for key, value in values.items():
            if key not in keys:
                close = difflib.get_close_matches(str(key), list(keys), n=1)
                problems.append(
                    f"{group}.{key} = {_show(value)} is not a parameter of group {group!r}"
                    + (f" (did you mean {group}.{close[0]}?)" if close else "")
                    + (f". Allowed keys: {', '.join(keys)}" if keys else ". This group takes no keys")
                    + ". Fix: correct the spelling or remove the key."
                )
        unknown = [str(k) for k in values if k not in keys]
        for key, spec in keys.items():
            if key not in values:
                if difflib.get_close_matches(key, unknown, n=1):
                    continue  # reported above as a misspelt key
                problems.append(f"{group}.{key} is missing: {spec.meaning}. Fix: add `{key}: {_show(spec.example)}` "
                                f"under {group}: ({spec.allowed()}).")
                continue
            bad = value_problem(f"{group}.{key}", values[key], spec)
            if bad:
                problems.append(bad)
    if schema is SCHEMA:
        flagged = {p.split(" ", 1)[0] for p in problems}
        for cross in CROSS_CHECKS:
            if not flagged.intersection(cross.keys):
                bad = cross.test(params)
                if bad:
                    problems.append(bad)
    if "notebooks" in params and not (
        isinstance(params["notebooks"], dict) and all(isinstance(v, str) for v in params["notebooks"].values())
    ):
        problems.append("notebooks: must map stage names to notebook names, e.g. `notebooks: {inject: 01_inject}`.")
    return problems


def check(params: Any, source: str = "params.yaml") -> None:
    """Raise :class:`ParamsError` listing every problem of ``params``."""
    problems = validate(params)
    if problems:
        raise ParamsError(problems, source)


def environment_problems(params: dict) -> list[str]:
    """What a valid ``params`` asks of this machine and it lacks: the encoder's weights
    (``common.encoder``; a pretrained tag imports open_clip, a few seconds) and a GPU
    (``common.device: cuda``). Empty list: all there. Nothing is written."""
    common = _group(params, "common")
    problems = []
    if common.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("common.device = 'cuda' but torch.cuda.is_available() is false on this machine (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Fix: set common.device "
                            "to cpu, or run on a machine with a CUDA GPU and a CUDA build of torch.")
    encoder = common.get("encoder", "embedded")
    if encoder != "embedded":
        from ecif.data.encoder_spec import WeightsUnavailableError, check_available

        try:
            check_available(encoder)
        except (WeightsUnavailableError, ValueError) as exc:
            problems.append(str(exc))
    return problems


def check_environment(params: dict, source: str = "params.yaml") -> None:
    """Raise :class:`ParamsError` listing :func:`environment_problems`."""
    problems = environment_problems(params)
    if problems:
        raise ParamsError(problems, source)


def load(path: str | Path) -> Any:
    """Read a parameters file (YAML); a syntax error is a :class:`ParamsError`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError([f"file not found: {path}"], str(path))
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError([f"not valid YAML: {exc}"], str(path)) from exc


def check_file(path: str | Path = "params.yaml", environment: bool = False) -> dict:
    """Load and check a parameters file; return its content. ``environment``: also check that
    the encoder's weights and the device are there (:func:`environment_problems`)."""
    params = load(path)
    check(params, str(path))
    if environment:
        check_environment(params, str(path))
    return params


def spec_for(key: str, groups: list[str], from_common: bool) -> Spec | None:
    """The spec of a notebook parameter ``key`` injected for a stage reading ``groups``.

    A key of one of the stage's groups (the last group wins, as in the runner's merge) takes that
    group's spec; a key coming from ``common`` takes common's; a value set by ``--override`` on a
    key of neither takes :data:`OVERRIDES` (sweep cells: kind, rate, noise_seed). None: no spec.
    """
    if not from_common:
        for group in reversed(groups):
            if key in SCHEMA.get(group, {}):
                return SCHEMA[group][key]
    if key in SCHEMA["common"]:
        return SCHEMA["common"][key]
    return OVERRIDES.get(key)


def check_injected(values: dict[str, Any], groups: list[str], common_keys: set[str] | frozenset = frozenset(),
                   source: str = "parameters") -> None:
    """Check the values a stage is about to inject into its notebook (after ``--override``).

    ``common_keys``: keys whose value comes from the ``common`` group. Keys without a spec
    (paths, names unknown to the schema) are left to the notebook. Raises :class:`ParamsError`.
    """
    problems = []
    for key, value in values.items():
        spec = spec_for(key, groups, key in common_keys)
        if spec is None:
            continue
        owner = "common" if key in common_keys else next((g for g in reversed(groups) if key in SCHEMA.get(g, {})), None)
        bad = value_problem(f"{owner}.{key}" if owner else key, value, spec)
        if bad:
            problems.append(bad)
    if problems:
        raise ParamsError(problems, source)


# --------------------------------------------------------------------------- command line


def schema_table() -> str:
    rows = ["| key | allowed | meaning |", "|---|---|---|"]
    for group, keys in SCHEMA.items():
        if not keys:
            rows.append(f"| `{group}` | `{{}}` (no keys) | |")
        for key, spec in keys.items():
            rows.append(f"| `{group}.{key}` | {spec.allowed()} | {spec.meaning} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecif.kit.params", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check a parameters file against the schema (exit 0 valid, 2 invalid)")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--ok-file", default=None, help="on success write this marker (fixed content); on failure "
                   "remove it")
    sub.add_parser("show", help="print the schema as a Markdown table")
    args = parser.parse_args(argv)
    if args.cmd == "show":
        print(schema_table())
        return 0
    ok_file = Path(args.ok_file) if args.ok_file else None
    try:
        check_file(args.params, environment=True)
    except ParamsError as exc:
        if ok_file is not None:
            ok_file.unlink(missing_ok=True)
        print(f"error: {exc}", file=sys.stderr)
        print("Nothing was run and no output was changed. After fixing, run the pipeline again "
              "(dvc repro); to go back to the last committed parameters: git checkout params.yaml",
              file=sys.stderr)
        return 2
    if ok_file is not None:
        ok_file.parent.mkdir(parents=True, exist_ok=True)
        if not ok_file.is_file() or ok_file.read_text() != OK_TEXT:
            ok_file.write_text(OK_TEXT)
    print(f"{args.params}: ok ({sum(len(k) for k in SCHEMA.values())} keys in {len(SCHEMA)} groups checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
