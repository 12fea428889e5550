"""The one place that handles data without class labels (a caption folder without a ``label`` column).

Such data can be corrupted by ``shuffle``, fitted, scored and ranked, but nothing that classifies
test images can run: the zero-shot accuracy of the fine-tuning stage is written as ``null`` with
a ``note`` (:func:`zero_shot`), and the stages built on zero-shot accuracy or mispredictions
(``cleaning``, ``traceback``, and ``summary`` through them) stop at their start with
:class:`LabelsRequiredError`, which says why and what to do (:func:`require_labels`). The noise
kinds that rewrite captions from labels or attributes are refused by ``check_params``
(``ecif.kit.params``) before anything runs.
"""

from __future__ import annotations

NO_LABELS_NOTE = ("the data set has no class labels (a caption folder without a 'label' column): there is no "
                  "zero-shot classification to measure; add a label column to captions.csv to get it")


class LabelsRequiredError(RuntimeError):
    """A stage needs class labels that the data set does not have."""


def has_labels(problem) -> bool:
    """Whether the problem has a zero-shot test set (labels and class prompts)."""
    return getattr(problem, "test_set", None) is not None


def zero_shot(problem, thetas: dict) -> dict:
    """Zero-shot test accuracy at each ``{name: theta}``; without labels each is ``None`` and
    ``note`` says why (what the metrics file records)."""
    if not has_labels(problem):
        return {**{name: None for name in thetas}, "note": NO_LABELS_NOTE}
    return {name: problem.test_set.accuracy(problem.param, theta) for name, theta in thetas.items()}


def require_labels(problem, stage: str, what: str = "zero-shot test accuracy") -> None:
    """Raise :class:`LabelsRequiredError` unless the problem has labels."""
    if not has_labels(problem):
        raise LabelsRequiredError(
            f"stage {stage!r} measures {what}, which needs class labels, but {NO_LABELS_NOTE.split(': ', 1)[0]}. "
            f"Add a 'label' column to captions.csv, or run only the stages that need no labels "
            f"(dvc repro detect: inject, encoder, finetune, loo, detect; or dvc repro ablation).")
