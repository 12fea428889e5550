"""Glue of the ``cleaning`` stage (notebook ``08_cleaning_editing``): the fits and the edit table as calls.

* :func:`cleaning_fits`: the fits the cleaning table is measured on, by ``cleaning.setting``:
  ``pipeline`` is the fit of stages 3 and 5 with its saved detection scores (one noise seed);
  ``shapes_swap`` fits ``shapes`` with a systematic swap of one attribute once per noise seed
  (:func:`ecif.kit.problem.scored_swap_fits`), every detection method scored on each fit.
* :func:`edit_table`: the paper's Table 2 on the fit of stages 3 and 5, whatever the cleaning
  setting: the ECIF-edited model against warm and cold retraining for the removal sets of
  :func:`ecif.experiments.editing.removal_sets`.

The cleaning table itself is :func:`ecif.experiments.cleaning.cleaning_runs` (its refits run on
Dask when the notebook is given a scheduler).
"""

from __future__ import annotations

import time

import pandas as pd

from ecif.experiments import editing
from ecif.kit.labels import require_labels
from ecif.kit.problem import FitSettings, load_fit, scored_swap_fits

__all__ = ["cleaning_fits", "edit_table"]


def cleaning_fits(setting: str, settings: FitSettings, *, seed: int, fit_dir: str, scores_file: str,
                  dataset: str, data_root: str, encoder_dir: str, attribute: str, rate: float, noise_seeds,
                  encoder: str = "embedded", device: str = "cpu") -> dict:
    """``{noise_seed: (problem, theta_hat, engine, scores)}``, the argument of
    :func:`ecif.experiments.cleaning.cleaning_runs` (scores: ``(n,)`` arrays by method, higher =
    more harmful, without ``random``). ``setting`` ``pipeline`` reads ``fit_dir`` and
    ``scores_file`` (key ``seed``); ``shapes_swap`` fits with ``settings`` once per noise seed.
    Raises :class:`~ecif.kit.labels.LabelsRequiredError` on a fit without class labels (the
    table measures zero-shot test accuracy)."""
    if setting == "pipeline":
        scores = pd.read_csv(scores_file).drop(columns=["pair", "misaligned", "random"])
        fits = {seed: (load_fit(fit_dir), {m: scores[m].to_numpy() for m in scores})}
    elif setting == "shapes_swap":
        fits = scored_swap_fits(dataset, data_root, encoder_dir, attribute=attribute, rate=rate,
                                noise_seeds=noise_seeds, settings=settings, encoder=encoder, device=device, seed=seed)
    else:
        raise ValueError(f"cleaning.setting must be 'shapes_swap' or 'pipeline', got {setting!r}.")
    for fitted, _ in fits.values():
        require_labels(fitted.problem, "cleaning")
    return {ns: (f.problem, f.theta_hat, f.engine(), s) for ns, (f, s) in fits.items()}


def edit_table(fit_dir: str, scores_file: str, fraction: float, random_seeds) -> tuple[pd.DataFrame, float]:
    """Table 2: :func:`ecif.experiments.editing.edit_vs_retrain` (variants ``ecif`` and
    ``newton``, warm and cold refits) on the fit in ``fit_dir`` for the removal sets of
    ``round(fraction * n)`` pairs (``harmful``/``valuable`` by the saved ``ecif`` scores, one
    ``random`` set per seed of ``random_seeds``). Returns ``(table, factorise_s)``, the seconds of
    the Hessian factorisation every edit shares."""
    fitted = load_fit(fit_dir)
    require_labels(fitted.problem, "cleaning")  # test accuracy of the edited and retrained models
    t0 = time.perf_counter()
    engine = fitted.engine()
    factorise_s = time.perf_counter() - t0
    sets = editing.removal_sets(pd.read_csv(scores_file)["ecif"].to_numpy(), round(fraction * fitted.problem.n),
                                seeds=random_seeds)
    table = editing.edit_vs_retrain(engine, sets, fitted.problem.val, fitted.problem.test_set,
                                    variants=("ecif", "newton"), preconditioner=engine.solver, cold=True)
    return table, factorise_s
