"""Run one pipeline stage: execute its notebook with parameters from ``params.yaml``.

Usage (this is what every ``dvc.yaml`` stage calls)::

    python -m ecif.kit.notebook_runner <stage> [--params params.yaml] [--override key=value ...]
                                   [--out-name <report name>]

What it does, in order:

1. Reads ``params.yaml`` (path relative to the repository root, i.e. the current directory,
   which is where DVC runs stage commands). The stage's parameters are the top-level group
   named after the stage (``inject:`` for stage ``inject``); more groups can be added with
   ``--group``. An optional ``common:`` group holds values shared by several notebooks
   (``seed``, ``device``): a ``common`` key is passed to a notebook only if that notebook's
   ``parameters`` cell defines it, and a stage group's own value wins over it.
2. Finds the notebook: ``notebooks:`` in ``params.yaml`` may map stage -> notebook name
   (``notebooks: {inject: 01_inject}``); otherwise ``notebooks/<stage>.ipynb`` or the single
   ``notebooks/<prefix>_<stage>.ipynb`` (``01_inject.ipynb``) is used.
3. Checks, *before executing anything*, that the notebook has a cell tagged ``parameters``,
   that every parameter of the stage group (after ``--override``) is assigned in that cell (a
   misspelt key in ``params.yaml`` fails at once instead of being silently ignored), and that
   every value it injects fits the schema of :mod:`ecif.kit.params` (type, range, allowed
   values; the error names the key, the value, what is allowed and the fix), and, for a stage
   that reads a data set (``dataset`` and ``data_root`` among its parameters), that the data's
   files are there (:func:`check_data`: what is missing, where it looked, how to provide it).
4. Executes the notebook with papermill (kernel ``ecif`` if installed, else ``python3``), with
   the repository root as working directory so relative paths such as ``data/`` work (and as
   ``$ECIF_ROOT``, where the kernel ``ecif`` of :mod:`ecif.kit.kernel` starts), and writes
   the executed copy to ``reports/<notebook>.ipynb`` plus an HTML export
   ``reports/<notebook>.html`` (``--out-name NAME``: ``reports/NAME.ipynb`` and ``.html``, so
   each cell of a ``foreach``/``matrix`` sweep keeps its own report). The source notebook under
   ``notebooks/`` is never modified, so it can be a stage dependency while the executed copy is
   a stage output.

   The copy is written to ``<name>.partial.ipynb`` while it runs and moved into place only when
   the run succeeds: a failed run leaves the previous report as it was and keeps its own, with
   the traceback, as ``<name>.failed.ipynb`` and ``.failed.html``. The copy carries no
   timestamps or durations (:func:`strip_volatile`), so the same inputs give the same bytes; the
   HTML works offline (:mod:`ecif.kit.report_html`: no CDN scripts, MathJax inlined when the
   notebook has math).

So a ``dvc.yaml`` stage reads::

    inject:
      cmd: python -m ecif.kit.notebook_runner inject
      deps: [notebooks/01_inject.ipynb, ecif]
      params: [inject]
      outs: [reports/01_inject.ipynb, reports/01_inject.html, ...]
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import yaml

COMMON_GROUP = "common"
NOTEBOOK_MAP_KEY = "notebooks"
PREFERRED_KERNEL = "ecif"
FALLBACK_KERNEL = "python3"


class StageError(RuntimeError):
    """A stage cannot run: bad parameters, missing notebook, or no ``parameters`` cell."""


# ----------------------------------------------------------------------------- parameters


def load_params(params_path: Path) -> dict[str, Any]:
    """Read ``params.yaml``; an empty file gives ``{}``."""
    if not params_path.is_file():
        raise StageError(f"parameters file not found: {params_path}")
    with params_path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise StageError(f"{params_path} must hold a mapping of groups, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=0.3"`` -> (["a", "b"], 0.3). The value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise StageError(f"--override expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise StageError(f"--override has an empty key: {text!r}")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(params: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``params[path[0]][path[1]]... = value``, creating nested dicts as needed."""
    node = params
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _command_hint(stage: str, dvc_file: str | Path = "dvc.yaml") -> str:
    """'; dvc.yaml runs this stage as: <cmd>' when dvc.yaml names the stage (its --group
    options say which parameter groups it reads), else ''."""
    try:
        stages = yaml.safe_load(Path(dvc_file).read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return ""
    cmd = (stages.get(stage) or {}).get("cmd") if isinstance(stages, dict) else None
    return f"; dvc.yaml runs this stage as: {' '.join(str(cmd).split())}" if cmd else ""


def matrix_position(stage: str, parameters: dict[str, Any], all_params: dict[str, Any],
                    dvc_file: str | Path = "dvc.yaml") -> tuple[int, int] | None:
    """``(i, n)``: this run is cell ``i`` of the ``n`` cells of a ``matrix`` stage of dvc.yaml.

    The axes' values come from ``${group.key}`` lists of the parameters file; the notebook
    parameter each axis sets is read from the stage command's ``--override <name>=${item.<axis>}``.
    ``None`` for a plain stage or when the cell cannot be placed.
    """
    try:
        spec = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage]
        axes = spec["matrix"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    values, names = [], []
    for axis, vals in axes.items():
        if isinstance(vals, str) and vals.startswith("${"):
            node: Any = all_params
            for part in vals[2:-1].split("."):
                node = node.get(part) if isinstance(node, dict) else None
            vals = node
        name = next((w.split("=", 1)[0] for w in str(spec.get("cmd", "")).split()
                     if w.endswith(f"=${{item.{axis}}}")), axis)
        if not isinstance(vals, list) or name not in parameters:
            return None
        values.append(vals)
        names.append(name)
    cells = list(itertools.product(*values))
    here = tuple(parameters[name] for name in names)
    return (cells.index(here) + 1, len(cells)) if here in cells else None


def stage_parameters(
    all_params: dict[str, Any], stage: str, groups: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (strict, common): the stage's own parameters and the shared ``common`` ones.

    ``strict`` merges the groups (default: the one named ``stage``) in order; every key of it
    must be a parameter of the notebook. ``common`` keys are optional for the notebook.
    """
    groups = groups or [stage]
    strict: dict[str, Any] = {}
    for group in groups:
        if group not in all_params:
            raise StageError(
                f"no group {group!r} in the parameters file (top-level keys: "
                f"{', '.join(sorted(map(str, all_params))) or 'none'}){_command_hint(stage)}"
            )
        value = all_params[group]
        if value is None:
            continue
        if not isinstance(value, dict):
            raise StageError(f"group {group!r} must be a mapping, got {type(value).__name__}")
        strict.update(copy.deepcopy(value))
    common = all_params.get(COMMON_GROUP) or {}
    if not isinstance(common, dict):
        raise StageError(f"group {COMMON_GROUP!r} must be a mapping")
    return strict, copy.deepcopy(common)


# ------------------------------------------------------------------------------ notebooks


def resolve_notebook(
    stage: str, all_params: dict[str, Any], notebooks_dir: Path, explicit: str | None = None
) -> Path:
    """Find the notebook of a stage (see the module docstring for the rules)."""
    name = explicit
    if name is None:
        mapping = all_params.get(NOTEBOOK_MAP_KEY)
        if isinstance(mapping, dict) and stage in mapping:
            name = str(mapping[stage])
    if name is not None:
        path = Path(name)
        if path.suffix != ".ipynb":
            path = path.with_name(path.name + ".ipynb")
        if not path.is_absolute() and path.parent == Path("."):
            path = notebooks_dir / path
        if not path.is_file():
            raise StageError(f"notebook for stage {stage!r} not found: {path}")
        return path
    exact = notebooks_dir / f"{stage}.ipynb"
    if exact.is_file():
        return exact
    candidates = sorted(notebooks_dir.glob(f"*_{stage}.ipynb"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise StageError(
            f"no notebook for stage {stage!r}: expected {exact} or {notebooks_dir}/<prefix>_{stage}"
            f".ipynb, or a '{NOTEBOOK_MAP_KEY}: {{{stage}: <name>}}' entry in the parameters file"
        )
    raise StageError(
        f"several notebooks match stage {stage!r}: {', '.join(p.name for p in candidates)}; "
        f"name one under '{NOTEBOOK_MAP_KEY}:' in the parameters file"
    )


def notebook_parameter_names(notebook_path: Path) -> set[str]:
    """Names assigned in the notebook's cell(s) tagged ``parameters``.

    Raises StageError if there is no such cell or it is not valid Python.
    """
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    cells = [
        c
        for c in nb.cells
        if c.get("cell_type") == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if not cells:
        raise StageError(
            f"{notebook_path} has no code cell tagged 'parameters'. Add one (JupyterLab: "
            "property inspector -> cell tags -> 'parameters') holding a default for every "
            "parameter, e.g. `rate = 0.1`."
        )
    names: set[str] = set()
    for cell in cells:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise StageError(f"the 'parameters' cell of {notebook_path} is not valid Python: {exc}")
        for node in tree.body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
    return names


def select_parameters(
    strict: dict[str, Any], common: dict[str, Any], defined: set[str], notebook: Path, stage: str
) -> dict[str, Any]:
    """Check the stage's keys against the notebook and build what papermill injects."""
    unknown = sorted(k for k in strict if k not in defined)
    if unknown:
        known = ", ".join(sorted(defined)) or "none"
        raise StageError(
            f"stage {stage!r}: parameter(s) {', '.join(unknown)} are not defined in the "
            f"'parameters' cell of {notebook} (defined there: {known}). Fix the spelling in "
            "the parameters file or add a default to that cell."
        )
    injected = {k: v for k, v in common.items() if k in defined}
    injected.update(strict)
    return injected


def check_values(
    parameters: dict[str, Any],
    strict: dict[str, Any],
    groups: list[str],
    stage: str,
    params_path: Path,
    root: Path,
) -> None:
    """Refuse values that break the schema of ``ecif.kit.params`` (types, ranges, choices).

    Checks what is about to be injected, ``--override`` included; a key the schema does not
    know (paths, a toy project's names) is left to the notebook. Raises StageError.
    """
    from ecif.kit import params as schema

    common_keys = {k for k in parameters if k not in strict}
    try:
        schema.check_injected(parameters, groups, common_keys, source=_short(params_path, root))
    except schema.ParamsError as exc:
        raise StageError(
            f"stage {stage!r} not run: {exc}\nNothing was executed and no report was changed "
            "(whole file: python -m ecif.kit.params check)."
        ) from None
    # what the values ask of this machine (common.encoder's weights, a GPU for common.device):
    # checked before a kernel starts, so a missing checkpoint stops the stage with nothing written
    machine = {k: parameters[k] for k in ("encoder", "device") if k in common_keys}
    problems = schema.environment_problems({"common": machine}) if machine else []
    if problems:
        raise StageError(
            f"stage {stage!r} not run: {schema.ParamsError(problems, _short(params_path, root))}\nNothing was "
            "executed and no report was changed."
        )


def check_data(parameters: dict[str, Any], stage: str, root: Path) -> None:
    """Refuse to start a notebook that reads a data set whose files are not there.

    A stage whose parameters name ``dataset`` and ``data_root`` (the first is ``inject``) checks
    them here, in a fraction of a second and before anything is written
    (:func:`ecif.data.datasets.check_available`): the error names what is missing, where it
    looked and how to provide it. Raises StageError.
    """
    if "dataset" not in parameters or "data_root" not in parameters:
        return
    from ecif.data.datasets import DatasetUnavailableError, check_available

    cwd = os.getcwd()
    try:
        os.chdir(root)  # relative paths are taken from the project root, as in the notebook
        check_available(str(parameters["dataset"]), str(parameters["data_root"]))
    except (DatasetUnavailableError, ValueError) as exc:
        raise StageError(f"stage {stage!r} not run: {exc}\nNothing was executed and no output was written.") from None
    finally:
        os.chdir(cwd)


def pick_kernel(preferred: str = PREFERRED_KERNEL) -> str:
    """``ecif`` if that Jupyter kernel is installed, else ``python3``."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
    except Exception:  # noqa: BLE001  # broken Jupyter install: let papermill complain
        return FALLBACK_KERNEL
    return preferred if preferred in specs else FALLBACK_KERNEL


# ------------------------------------------------------------------------------- running


def _report_stem(out_name: str) -> str:
    """``out_name`` without a trailing ``.ipynb``; a plain file name, never a path."""
    stem = out_name[: -len(".ipynb")] if out_name.endswith(".ipynb") else out_name
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise StageError(f"--out-name must be a plain file name, got {out_name!r}")
    return stem


def _short(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def export_html(executed: Path, html_path: Path, name: str | None = None, path: Path | None = None) -> None:
    """Write an HTML rendering of an executed notebook that works offline (``report_html``)."""
    from ecif.kit import report_html

    report_html.export(executed, html_path, name=name, path=path)


# Metadata that papermill and nbclient write but that is not a result: wall-clock times and
# durations. Removed from the executed copy so that the same inputs give the same bytes (and
# DVC's hashes do not move between identical runs).
_VOLATILE_NOTEBOOK_KEYS = ("start_time", "end_time", "duration")
_VOLATILE_CELL_KEYS = ("start_time", "end_time", "duration")
INJECTED_CELL_ID = "injected-parameters"


def strip_volatile(nb: Any, input_path: str, output_path: str) -> Any:
    """Drop timestamps and durations from an executed notebook node, in place; return it.

    Removed: papermill's notebook ``start_time``/``end_time``/``duration`` and the same per cell,
    nbclient's per-cell ``execution`` timestamps (``iopub.*``, ``shell.execute_reply``). The
    papermill ``input_path``/``output_path`` are set to the given (relative) paths, and the
    injected parameters cell, which papermill creates with a random id, gets a fixed id.
    Consecutive stream outputs of one kind (stdout, stderr) are merged into one: how the kernel
    split them depends on flush timing (progress lines such as ``refit 4/40``), not on results.
    Everything that is a result (outputs, execution counts, status, exception) is kept.
    """
    pm = nb.metadata.get("papermill")
    if pm is not None:
        for key in _VOLATILE_NOTEBOOK_KEYS:
            pm.pop(key, None)
        pm["input_path"] = input_path
        pm["output_path"] = output_path
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cpm = cell.metadata.get("papermill")
        if cpm is not None:
            for key in _VOLATILE_CELL_KEYS:
                cpm.pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []) and "id" in cell:
            cell["id"] = INJECTED_CELL_ID
        if cell.get("outputs"):
            cell["outputs"] = _merge_streams(cell["outputs"])
    return nb


def _merge_streams(outputs: list) -> list:
    """The outputs with each run of consecutive same-name stream outputs joined into the first."""
    merged: list = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (last is not None and out.get("output_type") == "stream" and last.get("output_type") == "stream"
                and out.get("name") == last.get("name")):
            last["text"] = "".join(last["text"]) + "".join(out["text"])
        else:
            merged.append(out)
    return merged


def _finish(partial: Path, final: Path, root: Path, nb_path: Path, html: bool) -> None:
    """Clean ``partial`` (papermill's output) and move it, and its HTML, to ``final`` (.ipynb)."""
    import nbformat

    nb = nbformat.read(str(partial), as_version=4)
    strip_volatile(nb, _short(nb_path, root), _short(final, root))
    nbformat.write(nb, str(partial))
    if html:
        html_tmp = partial.with_suffix(".html")
        export_html(partial, html_tmp, name=final.stem, path=root)
        os.replace(html_tmp, final.with_suffix(".html"))
    os.replace(partial, final)


def run_stage(
    stage: str,
    *,
    params_file: str | Path = "params.yaml",
    overrides: list[str] | None = None,
    groups: list[str] | None = None,
    notebook: str | None = None,
    root: str | Path = ".",
    notebooks_dir: str | Path = "notebooks",
    reports_dir: str | Path = "reports",
    kernel: str | None = None,
    html: bool = True,
    log_output: bool = False,
    out_name: str | None = None,
) -> Path:
    """Execute the notebook of ``stage``; return the path of the executed copy.

    Relative paths are taken from ``root``, which is also the notebook's working directory.
    ``out_name`` names the executed copy (``reports/<out_name>.ipynb`` and ``.html``) instead of
    the notebook's own name: one report per cell of a ``foreach``/``matrix`` sweep.
    """
    root = Path(root).resolve()
    params_path = Path(params_file)
    params_path = params_path if params_path.is_absolute() else root / params_path
    nb_dir = Path(notebooks_dir)
    nb_dir = nb_dir if nb_dir.is_absolute() else root / nb_dir
    out_dir = Path(reports_dir)
    out_dir = out_dir if out_dir.is_absolute() else root / out_dir

    all_params = load_params(params_path)
    strict, common = stage_parameters(all_params, stage, groups)
    for text in overrides or []:
        path, value = parse_override(text)
        apply_override(strict, path, value)

    nb_path = resolve_notebook(stage, all_params, nb_dir, notebook)
    defined = notebook_parameter_names(nb_path)
    parameters = select_parameters(strict, common, defined, nb_path, stage)
    check_values(parameters, strict, groups or [stage], stage, params_path, root)
    check_data(parameters, stage, root)

    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / (nb_path.name if out_name is None else f"{_report_stem(out_name)}.ipynb")
    # papermill writes the copy while it runs: into a side file, moved into place on success only,
    # so a failed run never replaces the last good report (it is kept as <name>.failed.ipynb/.html)
    partial = executed.with_name(f"{executed.stem}.partial.ipynb")
    failed = executed.with_name(f"{executed.stem}.failed.ipynb")
    kernel_name = kernel or pick_kernel()
    shown = ", ".join(f"{k}={v!r}" for k, v in parameters.items()) or "none"
    cell = matrix_position(stage, parameters, all_params, root / "dvc.yaml")
    print(
        f"[notebook_runner] stage {stage}" + (f" (cell {cell[0]} of {cell[1]})" if cell else "")
        + f": {_short(nb_path, root)} -> {_short(executed, root)} (kernel {kernel_name}; parameters: {shown})",
        flush=True,
    )
    start = time.perf_counter()
    # the kit's kernel (ecif.kit.kernel) starts in $ECIF_ROOT: the root this stage runs in
    saved_root = os.environ.get("ECIF_ROOT")
    os.environ["ECIF_ROOT"] = str(root)
    try:
        pm.execute_notebook(
            str(nb_path),
            str(partial),
            parameters=parameters,
            kernel_name=kernel_name,
            language="python",  # needed when the notebook has no kernelspec metadata
            cwd=str(root),
            progress_bar=False,
            log_output=log_output,
        )
    except BaseException:
        if partial.is_file():
            try:
                _finish(partial, failed, root, nb_path, html)  # the HTML shows the traceback in place
            except Exception as exc:  # noqa: BLE001  # keep the run's own error
                print(f"[notebook_runner] could not save the failed report: {exc}", file=sys.stderr)
            print(
                f"[notebook_runner] stage {stage}: failed; its report is {_short(failed, root)}"
                + (f" (and .html); the previous {_short(executed, root)} was left as it was"
                   if executed.is_file() else ""),
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        if saved_root is None:
            os.environ.pop("ECIF_ROOT", None)
        else:
            os.environ["ECIF_ROOT"] = saved_root
    _finish(partial, executed, root, nb_path, html)
    for stale in (failed, failed.with_suffix(".html")):
        stale.unlink(missing_ok=True)
    print(
        f"[notebook_runner] stage {stage}: done in {time.perf_counter() - start:.1f} s", flush=True
    )
    return executed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ecif.kit.notebook_runner",
        description="Execute the notebook of one pipeline stage with papermill, parameters from "
        "params.yaml; write reports/<notebook>.ipynb and .html.",
    )
    parser.add_argument(
        "stage", help="stage name; its parameters are the top-level group of that name"
    )
    parser.add_argument(
        "--params", default="params.yaml", help="parameters file (default: params.yaml)"
    )
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one stage parameter (value read as YAML); repeatable",
    )
    parser.add_argument(
        "--group",
        "-g",
        action="append",
        default=None,
        metavar="GROUP",
        help="parameter group(s) to use instead of the one named after the stage; repeatable",
    )
    parser.add_argument(
        "--notebook", help="notebook name or path (default: from params.yaml or inferred)"
    )
    parser.add_argument("--notebooks-dir", default="notebooks")
    parser.add_argument("--reports-dir", default="reports")
    parser.add_argument(
        "--kernel",
        help=f"Jupyter kernel (default: {PREFERRED_KERNEL} if installed, else {FALLBACK_KERNEL})",
    )
    parser.add_argument(
        "--out-name",
        help="name of the executed copy under the reports folder (default: the notebook's name); "
        "one per cell of a foreach/matrix sweep",
    )
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument(
        "--log-output", action="store_true", help="stream cell output to the terminal"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_stage(
            args.stage,
            params_file=args.params,
            overrides=args.override,
            groups=args.group,
            notebook=args.notebook,
            notebooks_dir=args.notebooks_dir,
            reports_dir=args.reports_dir,
            kernel=args.kernel,
            html=not args.no_html,
            log_output=args.log_output,
            out_name=args.out_name,
        )
    except StageError as exc:
        print(f"notebook_runner: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  # execution error: short message, details in report
        name = type(exc).__name__
        print(f"notebook_runner: stage {args.stage!r} failed ({name}): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
