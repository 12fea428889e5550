"""The package's layers and the pipeline's dependencies, checked from the source text.

* Import rule: ``ecif.core`` (the math) imports only ``ecif.core``, torch/numpy and a few plain
  standard-library modules (no pandas, no paths, no files); ``ecif.data`` imports only
  ``ecif.data``; ``ecif.experiments`` imports ``ecif.core``, ``ecif.data`` and itself; nothing
  outside ``ecif.kit`` imports ``ecif.kit`` (the DVC/papermill glue).
* Stage dependencies: every ``ecif`` module a stage's notebook (or its command) imports,
  directly or through other ``ecif`` modules, lies under one of the stage's ``deps`` in
  ``dvc.yaml``; otherwise an edit could leave the stage falsely "up to date".

Both checkers are also run on a deliberate violation, so a checker that reports nothing
cannot pass.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ecif"

#: What the math may import besides ``ecif.core`` (top-level module names).
CORE_ALLOWED = {"__future__", "torch", "numpy", "dataclasses", "typing", "warnings", "time", "math",
                "functools", "itertools", "collections", "abc", "enum",
                "sys"}  # sys: progress lines of long fits and solves go to sys.stderr
#: Layer -> the ``ecif`` subpackages it may import.
LAYERS = {
    "core": {"core"},
    "data": {"data"},
    "experiments": {"core", "data", "experiments"},
    "kit": {"core", "data", "experiments", "kit"},
}


# ------------------------------------------------------------------------------ imports


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> str:
    """The package a source file's relative imports are resolved against."""
    return ".".join(path.parent.relative_to(ROOT).parts)


def imports(source: str, package: str = "") -> set[str]:
    """Every module named by an import statement anywhere in ``source`` (functions included),
    relative imports resolved against ``package``; ``from a import b`` yields ``a`` and ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def calls_open(source: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
               for n in ast.walk(ast.parse(source)))


def layer_violations(module: str, source: str) -> list[str]:
    """Import-rule violations of one ``ecif`` module (empty list: it keeps the rule)."""
    parts = module.split(".")
    layer = parts[1] if len(parts) > 1 and parts[1] in LAYERS else None
    out = []
    for imp in sorted(imports(source, module.rsplit('.', 1)[0])):
        top = imp.split(".")
        if top[0] != "ecif":
            if layer == "core" and top[0] not in CORE_ALLOWED:
                out.append(f"{module} (math) imports {imp}: the math uses torch/numpy only")
            continue
        if len(top) < 2 or top[1] not in LAYERS:
            continue
        target = top[1]
        if target == "kit" and layer != "kit":
            out.append(f"{module} imports the glue {imp}: nothing outside ecif.kit may")
        elif layer is not None and target not in LAYERS[layer]:
            out.append(f"{module} ({layer}) imports {imp} ({target})")
    if layer == "core" and calls_open(source):
        out.append(f"{module} (math) opens files")
    return out


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_lives_in_a_layer() -> None:
    loose = [module_name(p) for p in package_modules()
             if p.parent == PACKAGE and p.name != "__init__.py"]
    assert not loose, f"modules outside core/data/experiments/kit: {loose}"


def test_import_rule_holds() -> None:
    bad = [v for p in package_modules() for v in layer_violations(module_name(p), p.read_text())]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, source", [
    ("ecif.core.objective", "import pandas as pd\n"),
    ("ecif.core.objective", "from pathlib import Path\n"),
    ("ecif.core.objective", "def f():\n    return open('x').read()\n"),
    ("ecif.core.influence", "def f():\n    from ecif.experiments import metrics\n"),
    ("ecif.experiments.detection", "from ecif.kit.plotting import save\n"),
    ("ecif.data.noise", "from ecif.core.terms import DTYPE\n"),
    ("ecif.core.solvers", "from ..kit import plotting\n"),
])
def test_import_rule_catches_a_violation(module: str, source: str) -> None:
    assert layer_violations(module, source), f"missed: {source!r} in {module}"


def test_no_module_shadows_the_standard_library() -> None:
    import sys

    clash = [module_name(p) for p in package_modules() if p.stem in sys.stdlib_module_names]
    assert not clash, f"modules named like standard-library modules: {clash}"


# ------------------------------------------------------------------------ stage deps


def module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def closure(modules: set[str]) -> set[Path]:
    """Files of every ``ecif`` module reached from ``modules`` (parents' ``__init__`` too)."""
    seen: set[str] = set()
    todo = [m for m in modules if m.split(".")[0] == "ecif"]
    files: set[Path] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = module_file(m)
        if f is None:
            continue
        files.add(f)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [i for i in imports(f.read_text(), package_of(f)) if i.split(".")[0] == "ecif"]
    return files


def notebook_source(path: Path) -> str:
    nb = json.loads(path.read_text())
    lines = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return "\n".join(line for line in lines.splitlines() if not line.lstrip().startswith(("%", "!")))


def stage_imports(stage: dict) -> set[str]:
    """The ``ecif`` modules a stage runs: its command's ``python -m`` module and its notebook's
    imports."""
    mods = set(re.findall(r"python -m ([\w.]+)", str(stage.get("cmd", ""))))
    for dep in stage.get("deps", []):
        dep = dep if isinstance(dep, str) else next(iter(dep))
        if dep.endswith(".ipynb"):
            mods |= imports(notebook_source(ROOT / dep))
    return {m for m in mods if m.split(".")[0] == "ecif"}


def uncovered(stage: dict) -> list[str]:
    """Files the stage imports that none of its deps (a file or a folder) covers."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    roots = [(ROOT / d).resolve() for d in deps]
    out = []
    for f in sorted(closure(stage_imports(stage))):
        f = f.resolve()
        if not any(f == r or r in f.parents for r in roots):
            out.append(str(f.relative_to(ROOT)))
    return out


def pipeline_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_depends_on_what_it_imports() -> None:
    stages = pipeline_stages()
    assert stages
    bad = {name: miss for name, st in stages.items() if (miss := uncovered(st))}
    assert not bad, f"stages whose deps miss modules they import: {bad}"


def test_stage_deps_check_catches_a_missing_dependency() -> None:
    stages = pipeline_stages()
    name, stage = next((n, s) for n, s in stages.items() if stage_imports(s))
    assert not uncovered(stage)
    thinned = dict(stage, deps=[d for d in stage["deps"]
                                if not (isinstance(d, str) and d.startswith("ecif/core"))])
    if any(f.parts[-2] == "core" for f in closure(stage_imports(stage))):
        assert uncovered(thinned), f"dropping ecif/core from {name}'s deps went unnoticed"
    thinned = dict(stage, deps=[d for d in stage["deps"]
                                if not (isinstance(d, str) and d.startswith("ecif/kit"))])
    assert uncovered(thinned), f"dropping ecif/kit from {name}'s deps went unnoticed"
