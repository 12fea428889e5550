"""The kit's Jupyter kernel ``ecif``: an ipykernel that starts in the repository root.

Every path in the notebooks (``data/``, ``artifacts/``, ``params.yaml``) is relative to the
repository root. JupyterLab starts a kernel in the folder of its notebook (``notebooks/``), so
the kernel ``ecif`` first changes to the root, then runs ipykernel as usual; a notebook therefore
runs top to bottom wherever Lab (or papermill) started its kernel.

Which folder:

1. ``$ECIF_ROOT`` when set (the stage runner sets it to the root it runs a stage in);
2. otherwise the repository that holds this package (the folder above ``ecif/`` that has
   ``pyproject.toml`` and ``dvc.yaml``, i.e. a checkout with the kit installed in editable mode);
3. otherwise the kernel stays where it was started.

Install (``tools/setup-venv.sh`` does this)::

    python -m ecif.kit.kernel install [--prefix PREFIX]

Kernelspec ``argv``: ``[python, -m, ecif.kit.kernel, -f, {connection_file}]``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

KERNEL_NAME = "ecif"
DISPLAY_NAME = "Python (ecif)"
ROOT_ENV = "ECIF_ROOT"
_MARKERS = ("pyproject.toml", "dvc.yaml")


def repository_root() -> Path | None:
    """The checkout this package lives in, or None (installed elsewhere)."""
    root = Path(__file__).resolve().parents[2]
    return root if all((root / m).is_file() for m in _MARKERS) else None


def kernel_directory() -> Path | None:
    """Where the kernel works: ``$ECIF_ROOT``, else :func:`repository_root` (see the module)."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    return repository_root()


def install(prefix: str | None = None, user: bool = False) -> Path:
    """Install the kernelspec ``ecif`` (``prefix`` default: this interpreter's ``sys.prefix``)
    with an ``argv`` that starts this module; returns the kernelspec folder."""
    from ipykernel.kernelspec import install as ipk_install

    if prefix is None and not user:
        prefix = sys.prefix
    where = Path(ipk_install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=prefix,
                             user=user))
    spec_file = where / "kernel.json"
    spec = json.loads(spec_file.read_text())
    argv = spec["argv"]
    argv[argv.index("ipykernel_launcher")] = "ecif.kit.kernel"
    spec_file.write_text(json.dumps(spec, indent=1))
    return where


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m ecif.kit.kernel install")
        parser.add_argument("--prefix", default=None)
        parser.add_argument("--user", action="store_true")
        args = parser.parse_args(argv[1:])
        print(install(args.prefix, args.user))
        return
    target = kernel_directory()
    if target is not None and target.is_dir():
        os.chdir(target)
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # as ipykernel_launcher does
    # tqdm.auto warns in every kernel without ipywidgets ("IProgress not found"); the kit's progress
    # lines are plain text, so the warning only clutters the executed reports
    warnings.filterwarnings("ignore", message="IProgress not found")
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
