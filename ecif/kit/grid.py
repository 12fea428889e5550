"""The detection grid as Dask tasks: every cell of the ``matrix`` stage ``detection_cell`` at once.

    python -m ecif.kit.grid                               # a LocalCluster, one worker per core
    python -m ecif.kit.grid --scheduler tcp://host:8786   # a running Dask scheduler
    python -m ecif.kit.grid --scheduler null              # serial, here
    python -m ecif.kit.grid --list                        # the cells and their outputs, nothing run
    dvc commit detection_cell                             # then DVC records what was written

DVC stays the orchestrator of the pipeline: ``dvc repro`` runs the grid's cells one after the
other, as stages. This module is the other way to compute the same cells, when a cluster (or the
cores of one machine) should run them side by side: it reads the stage from ``dvc.yaml`` (its
``matrix`` axes, filled from ``params.yaml`` ``detection_grid``, and its command), and runs each
cell's command, ``python -m ecif.kit.notebook_runner detection_cell ...`` with that cell's
``--override`` values, as one task. So a cell computes exactly what the stage computes, with
the same notebook and the same parameters, and writes the same files: the scores folder
``artifacts/detection_sweep/<cell>/``, the metrics file ``metrics/detection_sweep/<cell>.json``
and the executed report ``reports/06_detection_cell_<cell>.ipynb``.

Each task is self-contained. It runs the command in a scratch copy of the project root that
links every input (``params.yaml``, ``notebooks/``, ``data/``, the encoder, ...) and leaves out
the cell's own outputs, then sends the files it wrote back to the caller, which writes them
under its project root. Nothing is shipped to the workers but the cell's command (a cell
corrupts the split its own way, so it encodes its own features from the shared encoder on
disk); a worker needs the project at ``worker_root`` (the same path as here by default: a
LocalCluster, a shared file system, or a checkout with the data and the encoder on every
machine). The cells' metrics differ from a serial run only in their ``time`` group (wall-clock
seconds); every other byte is the same.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ecif.experiments import distributed
from ecif.experiments.progress import Progress

__all__ = ["Cell", "grid_cells", "main", "run_cell", "run_grid", "write_outputs"]

#: The matrix stage this module runs.
STAGE = "detection_cell"
#: What every cell's command must start with (the rest becomes the runner's arguments).
RUNNER = ("python", "-m", "ecif.kit.notebook_runner")


@dataclass(frozen=True)
class Cell:
    """One cell of a ``matrix`` stage: ``name`` as DVC spells it (``detection_cell@shuffle-0.1-0``),
    ``argv`` the arguments of ``python -m ecif.kit.notebook_runner``, ``outs`` the outputs
    (files or folders, relative to the project root) that the stage declares."""

    name: str
    argv: tuple[str, ...]
    outs: tuple[str, ...]


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"params.yaml has no {dotted} (the matrix of the stage reads it). Fix: add it, "
                             f"e.g. detection_grid: {{kinds: [shuffle], rates: [0.1], seeds: [0]}}.")
        node = node[part]
    return node


def grid_cells(root: str | Path = ".", params_file: str = "params.yaml", dvc_file: str = "dvc.yaml",
               stage: str = STAGE) -> list[Cell]:
    """The cells of ``stage`` in ``dvc_file`` (DVC's order: the product of the matrix axes in
    the order written), with ``${item.<axis>}`` filled in and the axes' ``${group.key}`` lists
    read from ``params_file``. Raises ``ValueError`` when the stage is missing, is not a
    ``matrix`` stage, or does not run the notebook runner."""
    root = Path(root)
    stages = (yaml.safe_load((root / dvc_file).read_text()) or {}).get("stages") or {}
    spec = stages.get(stage)
    if not isinstance(spec, dict) or "matrix" not in spec:
        raise ValueError(f"{root / dvc_file} has no matrix stage {stage!r}. Fix: run from the project root "
                         f"(where dvc.yaml is), or pass root=.")
    params = yaml.safe_load((root / params_file).read_text()) or {}
    axes = {}
    for axis, values in spec["matrix"].items():
        if isinstance(values, str) and values.startswith("${") and values.endswith("}"):
            values = _lookup(params, values[2:-1])
        if not isinstance(values, list) or not values:
            raise ValueError(f"the matrix axis {axis!r} of stage {stage!r} is {values!r}, not a non-empty list.")
        axes[axis] = values
    body = yaml.safe_dump({k: v for k, v in spec.items() if k != "matrix"})
    cells = []
    for combo in itertools.product(*axes.values()):
        text = body
        for axis, value in zip(axes, combo):
            text = text.replace(f"${{item.{axis}}}", str(value))
        cell = yaml.safe_load(text)
        words = shlex.split(" ".join(str(cell["cmd"]).split()))
        if tuple(words[:3]) != RUNNER:
            raise ValueError(f"stage {stage!r} runs {' '.join(words[:3])!r}; this grid runs only "
                             f"{' '.join(RUNNER)!r} commands.")
        outs = tuple(next(iter(o)) if isinstance(o, dict) else str(o)
                     for key in ("outs", "metrics", "plots") for o in cell.get(key) or [])
        cells.append(Cell(f"{stage}@{'-'.join(map(str, combo))}", tuple(words[3:]), outs))
    return cells


def _shadow(src: Path, dst: Path, outs: list[Path]) -> None:
    """Fill ``dst`` with links to the entries of ``src``, except the outputs ``outs`` (relative
    to ``src``) and the folders above them, which become real folders filled the same way."""
    dst.mkdir(exist_ok=True)
    if not src.is_dir():
        return
    for entry in sorted(src.iterdir()):
        rel = Path(entry.name)
        if rel in outs:
            continue
        inner = [o.relative_to(rel) for o in outs if o.parts[:1] == rel.parts and o != rel]
        if inner and entry.is_dir():
            _shadow(entry, dst / rel, inner)
        else:
            (dst / rel).symlink_to(entry.resolve())


def run_cell(cell: Cell, root: str | Path = ".") -> dict[str, bytes]:
    """Run one cell's command in a scratch copy of ``root`` (inputs linked, the cell's outputs
    left out, so nothing under ``root`` is written) and return the files it wrote: ``{path
    relative to the root: bytes}``, every file of each declared output. Raises
    ``RuntimeError`` with the end of the command's output when it fails or leaves an output
    out."""
    root = Path(root).resolve()
    outs = [Path(o) for o in cell.outs]
    with tempfile.TemporaryDirectory(prefix="ecif-cell-") as tmp:
        work = Path(tmp) / "project"
        _shadow(root, work, outs)
        proc = subprocess.run([sys.executable, "-m", "ecif.kit.notebook_runner", *cell.argv], cwd=work,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"cell {cell.name} failed (exit {proc.returncode}):\n{tail}")
        files = {}
        for out in outs:
            path = work / out
            if path.is_dir():
                files.update({str(p.relative_to(work)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()})
            elif path.is_file():
                files[str(out)] = path.read_bytes()
            else:
                raise RuntimeError(f"cell {cell.name} ran but did not write its output {out}.")
        return files


def _cell_task(root: str, cell: Cell) -> dict:
    """One task of :func:`run_grid`: the cell's files, or its error (so one failed cell does not
    lose the others)."""
    try:
        return {"files": run_cell(cell, root)}
    except Exception as exc:  # noqa: BLE001  # reported by run_grid with the cell's name
        return {"error": str(exc)}


def write_outputs(cell: Cell, files: dict[str, bytes], root: str | Path = ".") -> None:
    """Write a cell's files under ``root``, replacing its declared outputs (an output folder is
    emptied first, as DVC does before it runs a stage)."""
    root = Path(root)
    for out in cell.outs:
        path = root / out
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_file() or path.is_symlink():
            path.unlink()
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def run_grid(root: str | Path = ".", *, client=None, cells: list[Cell] | None = None,
             worker_root: str | Path | None = None, progress: bool | Progress = True) -> dict[str, str | None]:
    """Compute every cell (default: :func:`grid_cells` of ``root``), one task each on ``client``
    (serial without one), and write each cell's outputs under ``root`` as :func:`write_outputs`.

    ``worker_root``: where the project lies on the workers (default: ``root``). Returns
    ``{cell name: None}`` for the cells written and ``{cell name: error text}`` for those that
    failed (their old outputs are left as they were)."""
    root = Path(root).resolve()
    cells = grid_cells(root) if cells is None else cells
    results = distributed.map_shared(_cell_task, str(worker_root or root), cells, client=client, threads=1,
                                     progress=progress, label="cell")
    status = {}
    for cell, res in zip(cells, results):
        if "error" in res:
            status[cell.name] = res["error"]
        else:
            write_outputs(cell, res["files"], root)
            status[cell.name] = None
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecif.kit.grid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scheduler", help="null (serial), local, local:N, or tcp://host:port (default: "
                    f"common.scheduler of params.yaml when set, else local; {distributed.ENV_VAR} overrides)")
    ap.add_argument("--root", default=".", help="the project root (where dvc.yaml and params.yaml are)")
    ap.add_argument("--worker-root", help="the project root on the workers (default: the same path)")
    ap.add_argument("--stage", default=STAGE, help="the matrix stage of dvc.yaml (default: detection_cell)")
    ap.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells (names as --list prints)")
    ap.add_argument("--list", action="store_true", help="print the cells and their outputs; run nothing")
    args = ap.parse_args(argv)
    try:
        cells = grid_cells(args.root, stage=args.stage)
    except (OSError, ValueError) as exc:
        print(f"grid: error: {exc}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in cells})
        if unknown:
            print(f"grid: error: no cell(s) {', '.join(unknown)}; the cells are "
                  f"{', '.join(c.name for c in cells)}", file=sys.stderr)
            return 2
        cells = [c for c in cells if c.name in args.only]
    if args.list:
        for c in cells:
            print(f"{c.name}: {', '.join(c.outs)}")
        return 0
    scheduler = args.scheduler
    if scheduler is None:
        params = yaml.safe_load((Path(args.root) / "params.yaml").read_text()) or {}
        scheduler = (params.get("common") or {}).get("scheduler") or "local"
    try:
        client = distributed.connect(scheduler)
    except (ValueError, ConnectionError) as exc:
        print(f"grid: error: {exc}", file=sys.stderr)
        return 2
    where = "serial, here" if client is None else f"on {client.scheduler.address}"
    print(f"[grid] {len(cells)} cells of stage {args.stage}, {where}", flush=True)
    try:
        status = run_grid(args.root, client=client, cells=cells, worker_root=args.worker_root)
    finally:
        distributed.close(client)
    failed = {name: err for name, err in status.items() if err is not None}
    for name, err in failed.items():
        print(f"[grid] {name} failed: {err}", file=sys.stderr)
    print(f"[grid] {len(status) - len(failed)} of {len(status)} cells written"
          + ("; record them with `dvc commit`" if not failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
