"""The detection grid as Dask tasks (``python -m ecif.kit.grid``): the cells are read from dvc.yaml
as DVC expands them, and a 2-worker LocalCluster writes the same files as the serial cell runs."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ecif.experiments import distributed as D
from ecif.kit import grid
from tests.kit.conftest import ROOT, TINY, _expand


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)


def _project(root: Path, encoder_dir: Path | None = None, seeds=(0, 1)) -> Path:
    """A project copy with the tiny parameters and a grid of ``len(seeds)`` cells."""
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in TINY.items():
        params[group].update(values)
    params["detection_grid"]["seeds"] = list(seeds)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data").mkdir()
    (root / "data" / "shapes").symlink_to(ROOT / "data" / "shapes", target_is_directory=True)
    if encoder_dir is not None:
        (root / "artifacts").mkdir()
        (root / "artifacts" / "encoder_shapes").symlink_to(encoder_dir, target_is_directory=True)
    return root


def test_cells_are_the_dvc_matrix_cells(tmp_path):
    root = _project(tmp_path / "p", seeds=(0, 1, 2))
    cells = grid.grid_cells(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["detection_cell"]
    expected = _expand("detection_cell", spec, params)  # what the pipeline's smoke run executes
    assert [c.name for c in cells] == [name for name, _ in expected] == [
        f"detection_cell@systematic_swap-0.2-{s}" for s in (0, 1, 2)]
    for cell, (_, stage) in zip(cells, expected):
        assert " ".join(("python", "-m", "ecif.kit.notebook_runner") + cell.argv) == " ".join(stage["cmd"].split())
        outs = [next(iter(o)) for o in stage["outs"] + stage["metrics"]]
        assert list(cell.outs) == outs and len(outs) == 3
    assert "metrics/detection_sweep/systematic_swap_0.2_2.json" in cells[2].outs
    assert grid.main(["--root", str(root), "--list"]) == 0
    assert grid.main(["--root", str(root), "--only", "detection_cell@nope"]) == 2
    with pytest.raises(ValueError, match="no matrix stage"):
        grid.grid_cells(root, stage="ablation")


def test_write_outputs_replaces_an_output_folder(tmp_path):
    cell = grid.Cell("c@1", (), ("out/c1", "m/c1.json"))
    (tmp_path / "out" / "c1").mkdir(parents=True)
    (tmp_path / "out" / "c1" / "stale.csv").write_text("old")
    grid.write_outputs(cell, {"out/c1/scores.csv": b"a,b\n", "m/c1.json": b"{}"}, tmp_path)
    assert sorted(p.name for p in (tmp_path / "out" / "c1").iterdir()) == ["scores.csv"]
    assert (tmp_path / "m" / "c1.json").read_bytes() == b"{}"


def _without_time(files: dict) -> dict:
    out = {}
    for path, data in files.items():
        if path.endswith(".json"):
            metrics = json.loads(data)
            assert metrics.pop("time")  # wall-clock seconds: the only part that may differ
            data = metrics
        out[path] = data
    return out


@pytest.mark.slow
def test_two_worker_cluster_writes_what_the_serial_cells_write(tmp_path, shapes_encoder_dir):
    root = _project(tmp_path / "p", shapes_encoder_dir)
    cells = grid.grid_cells(root)
    assert len(cells) == 2
    serial = [grid.run_cell(c, root) for c in cells]
    assert not (root / "metrics").exists() and not (root / "reports").exists()  # the root is never written
    for cell, files in zip(cells, serial):
        assert {f.split("/")[0] for f in files} == {"artifacts", "metrics", "reports"}
        assert f"{cell.outs[0]}/scores.csv" in files and cell.outs[1] in files and cell.outs[2] in files

    client = D.connect("local:2")
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        status = grid.run_grid(root, client=client, progress=False)
    finally:
        D.close(client)
    assert status == {c.name: None for c in cells}
    for cell, files in zip(cells, serial):
        written = {str(p.relative_to(root)): p.read_bytes() for out in cell.outs
                   for p in ([root / out] if (root / out).is_file() else sorted((root / out).rglob("*")))
                   if p.is_file()}
        assert _without_time(written) == _without_time(files), cell.name
    # the two cells differ (another noise seed): the comparison above can fail
    assert serial[0][f"{cells[0].outs[0]}/scores.csv"] != serial[1][f"{cells[1].outs[0]}/scores.csv"]
