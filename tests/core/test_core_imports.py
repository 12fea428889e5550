"""The math stays pure: ``ecif/core`` does no I/O, and the shared constants have one home."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ecif"
CORE_FILES = sorted((PACKAGE / "core").glob("*.py"))
NO_IO_MODULES = {"pandas", "pathlib", "json", "os", "io", "pickle", "shutil", "tempfile"}
NO_IO_CALLS = {"open", "save", "load", "savez", "savetxt", "loadtxt", "read_text", "write_text"}
SHARED = {"DTYPE", "TERMS", "VARIANTS", "VARIANT_TERMS"}


def _imported_modules(tree: ast.AST) -> set[str]:
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_does_no_io(path):
    tree = ast.parse(path.read_text())
    assert not _imported_modules(tree) & NO_IO_MODULES
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & NO_IO_CALLS


def test_shared_constants_are_defined_only_in_terms():
    owners = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id in SHARED:
                    owners.setdefault(t.id, []).append(str(path.relative_to(PACKAGE)))
    assert owners == {name: ["core/terms.py"] for name in SHARED}
