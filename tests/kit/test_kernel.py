"""ecif.kit.kernel: the kernel ``ecif`` starts in the repository root (or ``$ECIF_ROOT``), so a
notebook runs top to bottom wherever Lab or papermill starts it; notebook 00 is executed from
another working directory and its toy case must agree with leave-one-out."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pm = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from ecif.kit import kernel, notebook_runner as nr

ROOT = Path(__file__).resolve().parents[2]
NB00 = ROOT / "notebooks" / "00_influence_from_zero.ipynb"


def test_repository_root_is_the_checkout(monkeypatch) -> None:
    assert kernel.repository_root() == ROOT
    monkeypatch.delenv(kernel.ROOT_ENV, raising=False)
    assert kernel.kernel_directory() == ROOT
    monkeypatch.setenv(kernel.ROOT_ENV, "/some/project")
    assert kernel.kernel_directory() == Path("/some/project")


@pytest.fixture
def ecif_kernel(tmp_path: Path, monkeypatch) -> Path:
    """The kernelspec ``ecif`` as setup-venv.sh installs it, in a temporary prefix found first."""
    where = kernel.install(prefix=str(tmp_path / "prefix"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    monkeypatch.delenv(kernel.ROOT_ENV, raising=False)
    return where


def test_install_writes_a_spec_that_starts_the_launcher(ecif_kernel: Path) -> None:
    spec = json.loads((ecif_kernel / "kernel.json").read_text())
    argv = spec["argv"]
    assert argv[0] == sys.executable and argv[argv.index("-m") + 1] == "ecif.kit.kernel"
    assert "{connection_file}" in argv and spec["display_name"] == kernel.DISPLAY_NAME
    from jupyter_client.kernelspec import KernelSpecManager

    assert Path(KernelSpecManager().find_kernel_specs()["ecif"]) == ecif_kernel


def _cwd_notebook(path: Path) -> None:
    cell = nbformat.v4.new_code_cell("out = ''")
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(
        "import os, pathlib\npathlib.Path(out).write_text(os.getcwd())")])
    nb.metadata["kernelspec"] = {"name": "ecif", "display_name": "Python (ecif)", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def test_stage_runs_keep_their_root_with_the_ecif_kernel(ecif_kernel: Path, tmp_path: Path) -> None:
    """The stage runner's root wins over the checkout (it sets $ECIF_ROOT), and is unset after."""
    project = tmp_path / "project"
    _cwd_notebook(project / "notebooks" / "01_where.ipynb")
    seen = tmp_path / "seen.txt"
    (project / "params.yaml").write_text(f"where:\n  out: {seen}\n")
    nr.run_stage("where", root=project, kernel="ecif", html=False)
    assert Path(seen.read_text()).resolve() == project.resolve()
    assert kernel.ROOT_ENV not in os.environ


def test_every_notebook_asks_for_the_ecif_kernel() -> None:
    """Lab starts the kernel a notebook names: ``ecif``, the one that starts in the root."""
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(nb.read_text())["metadata"].get("kernelspec", {})
        assert spec.get("name") == kernel.KERNEL_NAME, f"{nb.name}: kernelspec {spec}"


def test_notebook_00_runs_from_another_directory(ecif_kernel: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    record = tmp_path / "record"
    start = time.perf_counter()
    pm.execute_notebook(str(NB00), str(tmp_path / "00.ipynb"), parameters={"out_dir": str(record)},
                        kernel_name="ecif", cwd=str(elsewhere), progress_bar=False)
    seconds = time.perf_counter() - start
    numbers = json.loads((record / "notebook00.json").read_text())
    assert Path(numbers["cwd"]).resolve() == ROOT  # the kernel moved to the repository root
    assert numbers["toy_pearson"] >= 0.99, numbers["toy_pearson"]
    clean = numbers["contrastive"]["clean"]
    assert clean["ecif"] > clean["positive"]
    executed = nbformat.read(str(tmp_path / "00.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "Convex toy: the first-order estimate agrees almost exactly" in text
    # section 4b: the network's fit is a saddle, and the sentence states the recorded agreement
    saddle, damped = numbers["nonconvex"][0], numbers["nonconvex_damping"]
    assert saddle["min_eig"] < 0 and saddle["grad_norm"] <= 1e-10 and saddle["min_eig_refits"] > 0
    assert f"the estimate's Pearson is {saddle['pearson']:.3f}" in text
    assert any(r["min_eig"] > 0 and f"Pearson falls from {saddle['pearson']:.3f} to {r['pearson']:.3f}" in text
               for r in damped)
    assert not any(o.get("output_type") == "error" for c in executed.cells if c.cell_type == "code"
                   for o in c.outputs)
    print(f"notebook 00 ran in {seconds:.1f} s")
