"""Importing any ecif module has no side effects: no environment variable set, no file made.

Every module is imported in one fresh interpreter whose temporary folder (``TMPDIR``) is a
directory of the test. The third-party modules that ecif imports at module level are imported
first (some set variables of their own: scikit-learn sets ``KMP_DUPLICATE_LIB_OK``), then the
snapshot is taken; after importing every ecif module, ``os.environ`` and the temporary folder
must equal their snapshots. Work that needs the environment (open_clip's offline mode, the
registry folder of model configs) happens when a function is called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import ast, importlib, json, os, pkgutil, sys, tempfile
from pathlib import Path

root = Path(sys.argv[1])
third_party = set()
for path in sorted((root / "ecif").rglob("*.py")):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            third_party.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            third_party.add(node.module)
for name in sorted(m for m in third_party if m.split(".")[0] != "ecif"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
before = dict(os.environ)
tmp_before = sorted(os.listdir(tempfile.gettempdir()))
import ecif
names = ["ecif"] + sorted(m.name for m in pkgutil.walk_packages(ecif.__path__, "ecif."))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # reported, so the test names the module
        failed[name] = f"{type(exc).__name__}: {exc}"
after = dict(os.environ)
changed = {k: [before.get(k), after.get(k)] for k in set(before) | set(after) if before.get(k) != after.get(k)}
new_tmp = sorted(set(os.listdir(tempfile.gettempdir())) - set(tmp_before))
print(json.dumps({"modules": names, "failed": failed, "changed": changed, "new_tmp": new_tmp,
                  "open_clip_imported": "open_clip" in sys.modules}))
"""


def test_importing_every_module_changes_no_environment_and_makes_no_temp_folder(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    env.update(TMPDIR=str(tmp), PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.setdefault("MPLCONFIGDIR", str(tmp_path / "mpl"))  # matplotlib's own cache, outside TMPDIR
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ecif.data.encoders" in report["modules"] and "ecif.kit.notebook_runner" in report["modules"]
    assert not report["failed"], report["failed"]
    assert report["changed"] == {}, f"importing ecif changed os.environ: {report['changed']}"
    assert report["new_tmp"] == [], f"importing ecif created {report['new_tmp']} in TMPDIR"
    assert report["open_clip_imported"] is False, "open_clip must be imported lazily (after HF_HUB_OFFLINE)"


def test_open_clip_module_sets_offline_mode_before_importing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ECIF_ALLOW_DOWNLOAD")}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    code = (
        "import os, sys\n"
        "from ecif.data import encoders as E\n"
        "assert 'HF_HUB_OFFLINE' not in os.environ\n"
        "E.open_clip_module()\n"
        "import huggingface_hub.constants as c\n"
        "print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "True"]
