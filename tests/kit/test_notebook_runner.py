"""ecif.kit.notebook_runner: parameter injection, and the two checks made before executing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from ecif.kit import notebook_runner as nr


def write_notebook(path: Path, parameters_source: str | None) -> None:
    """A two-cell notebook: parameters (tagged, unless None) and a cell dumping them to JSON."""
    cells = []
    if parameters_source is not None:
        cell = nbformat.v4.new_code_cell(parameters_source)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    else:
        cells.append(nbformat.v4.new_code_cell("rate = 0.1\nseed = 0\nname = 'x'"))
    cells.append(nbformat.v4.new_markdown_cell("Writes what it received, relative to the cwd."))
    cells.append(
        nbformat.v4.new_code_cell(
            "import json, os\n"
            "with open('seen.json', 'w') as fh:\n"
            "    json.dump({'rate': rate, 'seed': seed, 'name': name, 'cwd': os.getcwd()}, fh)"
        )
    )
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(
        "common:\n  seed: 7\n  device: cpu\n"  # device is not a parameter of the notebook
        "toy:\n  rate: 0.3\n  name: injected\n"
        "typo:\n  rtae: 0.3\n"
    )
    write_notebook(tmp_path / "notebooks" / "01_toy.ipynb", "rate = 0.1\nseed = 0\nname = 'x'")
    return tmp_path


def test_parameters_are_injected_and_reports_written(project: Path) -> None:
    executed = nr.run_stage("toy", root=project, overrides=["name=overridden"])
    assert executed == project / "reports" / "01_toy.ipynb"
    seen = json.loads((project / "seen.json").read_text())
    assert seen["rate"] == 0.3  # from the stage group
    assert seen["seed"] == 7  # from common, defined in the notebook
    assert seen["name"] == "overridden"  # --override wins
    assert Path(seen["cwd"]).resolve() == project.resolve()  # runs from the repository root
    html = (project / "reports" / "01_toy.html").read_text()
    assert "<html" in html.lower() and "overridden" in html
    # the source notebook is left untouched (it is a stage dependency)
    source = nbformat.read(str(project / "notebooks" / "01_toy.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code")


def test_missing_parameters_cell_fails_before_executing(project: Path) -> None:
    write_notebook(project / "notebooks" / "01_toy.ipynb", None)
    with pytest.raises(nr.StageError, match="no code cell tagged 'parameters'"):
        nr.run_stage("toy", root=project)
    assert not (project / "seen.json").exists()
    assert not (project / "reports" / "01_toy.ipynb").exists()


def test_unknown_parameter_fails_before_executing(project: Path, capsys) -> None:
    # stage "typo" maps to the same notebook; its key `rtae` is not defined there
    params = project / "params.yaml"
    params.write_text(params.read_text() + "notebooks:\n  typo: 01_toy\n")
    assert (
        nr.main(
            [
                "typo",
                "--params",
                str(params),
                "--notebooks-dir",
                str(project / "notebooks"),
                "--reports-dir",
                str(project / "reports"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "rtae" in err and "not defined in the 'parameters' cell" in err
    assert not (project / "reports" / "01_toy.ipynb").exists()


def test_override_typo_is_caught_too(project: Path) -> None:
    with pytest.raises(nr.StageError, match="nosuch"):
        nr.run_stage("toy", root=project, overrides=["nosuch=1"])


def test_notebook_resolution(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    write_notebook(nbs / "02_fit.ipynb", "a = 1")
    write_notebook(nbs / "fit_extra.ipynb", "a = 1")
    assert nr.resolve_notebook("fit", {}, nbs) == nbs / "02_fit.ipynb"
    assert (
        nr.resolve_notebook("x", {"notebooks": {"x": "fit_extra"}}, nbs) == nbs / "fit_extra.ipynb"
    )
    with pytest.raises(nr.StageError, match="no notebook for stage"):
        nr.resolve_notebook("missing", {}, nbs)


def test_override_values_are_yaml() -> None:
    assert nr.parse_override("noise.rate=0.3") == (["noise", "rate"], 0.3)
    assert nr.parse_override("flag=true") == (["flag"], True)
    assert nr.parse_override("ks=[1, 5]") == (["ks"], [1, 5])
    with pytest.raises(nr.StageError):
        nr.parse_override("no_equals_sign")


def test_out_name_names_the_executed_copy(project: Path, monkeypatch) -> None:
    """A foreach/matrix cell keeps its own report: --out-name replaces the notebook's name."""
    monkeypatch.chdir(project)
    assert nr.main(["toy", "--override", "rate=0.2", "--out-name", "01_toy_rate0.2"]) == 0
    assert json.loads((project / "seen.json").read_text())["rate"] == 0.2
    assert (project / "reports" / "01_toy_rate0.2.ipynb").is_file()
    assert (project / "reports" / "01_toy_rate0.2.html").stat().st_size > 0
    assert not (project / "reports" / "01_toy.ipynb").exists()
    executed = nr.run_stage("toy", root=project, out_name="01_toy_b.ipynb", html=False)
    assert executed == project / "reports" / "01_toy_b.ipynb"
    with pytest.raises(nr.StageError, match="plain file name"):
        nr.run_stage("toy", root=project, out_name="../elsewhere")


# ------------------------------------------------ schema, failed runs, reproducible reports


def test_out_of_range_value_is_refused_before_executing(project: Path) -> None:
    with pytest.raises(nr.StageError) as err:
        nr.run_stage("toy", root=project, overrides=["rate=1.5"])
    msg = str(err.value)
    assert "rate = 1.5" in msg and "> 0 and < 1" in msg and "Fix:" in msg, msg
    assert not (project / "seen.json").exists()
    assert not (project / "reports").exists() or not any((project / "reports").iterdir())


def test_wrong_type_from_common_is_refused(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("seed: 7", "seed: seven"))
    with pytest.raises(nr.StageError, match=r"common\.seed = 'seven' has the wrong type \(str\)"):
        nr.run_stage("toy", root=project)
    assert not (project / "seen.json").exists()


def _raising_notebook(path: Path) -> None:
    """Parameters cell, then a cell that fails when rate > 0.5."""
    cell = nbformat.v4.new_code_cell("rate = 0.1\nseed = 0\nname = 'x'")
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[
        cell,
        nbformat.v4.new_code_cell("print(f'rate is {rate}')"),
        nbformat.v4.new_code_cell("if rate > 0.5:\n    raise ValueError('rate too high for this toy')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def test_failed_run_keeps_the_previous_report(project: Path, capsys) -> None:
    _raising_notebook(project / "notebooks" / "01_toy.ipynb")
    reports = project / "reports"
    nr.run_stage("toy", root=project)  # rate 0.3: succeeds
    good = {p: (reports / p).read_bytes() for p in ("01_toy.ipynb", "01_toy.html")}
    assert nr.main(["toy", "--params", str(project / "params.yaml"), "--notebooks-dir", str(project / "notebooks"),
                    "--reports-dir", str(reports), "--override", "rate=0.9"]) == 1
    assert {p: (reports / p).read_bytes() for p in good} == good  # untouched
    failed = nbformat.read(str(reports / "01_toy.failed.ipynb"), as_version=4)
    assert failed.metadata.papermill.exception is True
    assert "rate too high" in (reports / "01_toy.failed.html").read_text()
    assert not list(reports.glob("*.partial.*"))
    assert "01_toy.failed.ipynb" in capsys.readouterr().err
    nr.run_stage("toy", root=project)  # a later success removes the failed copy
    assert not (reports / "01_toy.failed.ipynb").exists() and not (reports / "01_toy.failed.html").exists()


def test_same_inputs_give_byte_identical_reports(project: Path) -> None:
    """No timestamps, durations or random ids in the executed copy or its HTML."""
    reports = project / "reports"
    nr.run_stage("toy", root=project)
    first = {p.name: p.read_bytes() for p in sorted(reports.iterdir())}
    nr.run_stage("toy", root=project)
    second = {p.name: p.read_bytes() for p in sorted(reports.iterdir())}
    assert sorted(first) == ["01_toy.html", "01_toy.ipynb"]
    assert first == second
    nb = nbformat.read(str(reports / "01_toy.ipynb"), as_version=4)
    text = json.dumps(nb)
    for key in ("start_time", "end_time", "duration", "iopub.", "shell.execute_reply"):
        assert key not in text, key
    assert nb.metadata.papermill.input_path == "notebooks/01_toy.ipynb"
    assert nb.metadata.papermill.output_path == "reports/01_toy.ipynb"
    assert any(c.get("id") == nr.INJECTED_CELL_ID for c in nb.cells)


def test_missing_encoder_weights_stop_the_stage_before_a_kernel_starts(project: Path) -> None:
    """A stage that reads common.encoder checks its weights first: the error, and nothing written."""
    missing = project / "weights" / "open_clip_pytorch_model.bin"
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("common:\n", f"common:\n  encoder: ViT-B-32:{missing}\n") + "enc: {}\n")
    write_notebook(project / "notebooks" / "02_enc.ipynb", "encoder = 'embedded'\nseed = 0")
    with pytest.raises(nr.StageError) as err:
        nr.run_stage("enc", root=project)
    msg = str(err.value)
    assert f"common.encoder = 'ViT-B-32:{missing}'" in msg and "does not exist" in msg and "Nothing was" in msg
    assert not (project / "reports").exists() and not (project / "seen.json").exists()
    nr.run_stage("toy", root=project)  # a stage that does not read the encoder is not held up


def test_stream_outputs_are_merged_whatever_the_flush_timing() -> None:
    """Progress lines reach the notebook as one or several stream outputs, depending on when the
    kernel flushed; the cleaned report holds one per run of same-name streams."""
    def cell(outputs):
        c = nbformat.v4.new_code_cell("x")
        c.outputs = outputs
        return c

    stream = nbformat.v4.new_output
    split = [stream("stream", name="stderr", text="refit 4/8\n"), stream("stream", name="stderr", text="refit 8/8\n"),
             stream("stream", name="stdout", text="done\n"), stream("execute_result", data={"text/plain": "1"})]
    whole = [stream("stream", name="stderr", text="refit 4/8\nrefit 8/8\n"), stream("stream", name="stdout", text="done\n"),
             stream("execute_result", data={"text/plain": "1"})]
    a, b = nbformat.v4.new_notebook(cells=[cell(split)]), nbformat.v4.new_notebook(cells=[cell(whole)])
    nr.strip_volatile(a, "in.ipynb", "out.ipynb")
    nr.strip_volatile(b, "in.ipynb", "out.ipynb")
    assert a.cells[0].outputs == b.cells[0].outputs  # (cell ids are random here)
    assert [o["output_type"] for o in a.cells[0].outputs] == ["stream", "stream", "execute_result"]


def test_missing_group_names_the_stage_command_of_dvc_yaml(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  inject:\n    cmd: python -m ecif.kit.notebook_runner inject --group noise\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(nr.StageError) as err:
        nr.stage_parameters({"noise": {"rate": 0.2}, "common": {}}, "inject")
    assert "no group 'inject'" in str(err.value)
    assert "dvc.yaml runs this stage as: python -m ecif.kit.notebook_runner inject --group noise" in str(err.value)
    with pytest.raises(nr.StageError) as err:  # a stage dvc.yaml does not name: no hint, still the error
        nr.stage_parameters({"noise": {}}, "nosuchstage")
    assert "dvc.yaml runs" not in str(err.value)


def test_matrix_cells_are_numbered(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  cell:\n    matrix:\n      kind: ${grid.kinds}\n      seed: ${grid.seeds}\n"
        "    cmd: python -m ecif.kit.notebook_runner cell --override kind=${item.kind}"
        " --override noise_seed=${item.seed}\n  plain:\n    cmd: echo\n")
    params = {"grid": {"kinds": ["shuffle", "swap"], "seeds": [0, 1, 2]}}
    dvc = tmp_path / "dvc.yaml"
    assert nr.matrix_position("cell", {"kind": "shuffle", "noise_seed": 0}, params, dvc) == (1, 6)
    assert nr.matrix_position("cell", {"kind": "swap", "noise_seed": 1}, params, dvc) == (5, 6)
    assert nr.matrix_position("cell", {"kind": "swap", "noise_seed": 7}, params, dvc) is None  # not a cell
    assert nr.matrix_position("plain", {}, params, dvc) is None
    assert nr.matrix_position("cell", {"kind": "swap", "noise_seed": 1}, params, tmp_path / "none.yaml") is None
