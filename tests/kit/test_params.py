"""ecif.kit.params: the schema of params.yaml, its command, and its place first in dvc.yaml."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ecif.kit import params as P

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def good() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def problems_with(good: dict, group: str, key: str, value) -> list[str]:
    params = copy.deepcopy(good)
    params[group][key] = value
    return P.validate(params)


def test_the_projects_params_yaml_is_valid(good: dict) -> None:
    assert P.validate(good) == []
    P.check_file(ROOT / "params.yaml")


def test_typo_in_a_key_names_the_key_and_the_fix(good: dict) -> None:
    good["loo"]["n_piars"] = good["loo"].pop("n_pairs")
    (msg,) = P.validate(good)  # one message: the misspelt key (not also "n_pairs is missing")
    assert msg.startswith("loo.n_piars = 40 is not a parameter of group 'loo'")
    assert "did you mean loo.n_pairs?" in msg and "Fix:" in msg


def test_typo_in_a_group_name(good: dict) -> None:
    good["finetnue"] = good.pop("finetune")
    msgs = P.validate(good)
    assert any("unknown group 'finetnue'" in m and "did you mean 'finetune'" in m for m in msgs), msgs
    assert any("group 'finetune' is missing" in m for m in msgs), msgs


@pytest.mark.parametrize(
    "group, key, value, expected",
    [
        ("noise", "rate", 1.5, "noise.rate = 1.5 is out of range: must be a number > 0 and < 1"),
        ("noise", "rate", 0.0, "noise.rate = 0.0 is out of range"),
        ("noise", "rate", "0.2", "noise.rate = '0.2' is a string, not a number"),
        ("noise", "kind", "shufle", "noise.kind = 'shufle' is not an allowed value (did you mean shuffle?)"),
        ("finetune", "lam", 0, "finetune.lam = 0 is out of range: must be a number > 0"),
        ("finetune", "gtol", "1e-9", "write 1.0e-9"),
        ("finetune", "batch_size", 0, "finetune.batch_size = 0 is out of range: must be an integer >= 2 or null"),
        ("finetune", "batch_size", 32.5, "finetune.batch_size = 32.5 has the wrong type (float)"),
        ("finetune", "method", "lbfgs", "must be one of newton, newton-cg, auto"),
        ("finetune", "centre", 1, "finetune.centre = 1 has the wrong type (int, not true/false)"),
        ("finetune", "centre", "yes", "must be true or false"),
        ("encoder", "epochs", True, "encoder.epochs = true has the wrong type (bool)"),
        ("common", "seed", -1, "common.seed = -1 is out of range: must be an integer >= 0"),
        ("common", "dataset", "mnist", "must be one of digits, shapes"),
        ("detection_grid", "kinds", [], "detection_grid.kinds = [] has 0 item(s), fewer than 1"),
        ("detection_grid", "kinds", ["shuffle", "typo"], "has an invalid item 1 ('typo': is not an allowed value"),
        ("detection_grid", "rates", [0.1, 0.1], "repeats 0.1"),
        ("detection_grid", "seeds", 0, "has the wrong type (int, not a list)"),
        ("ablation", "batch_sizes", [64, None, 1], "has an invalid item 2 (1: is out of range)"),
        ("cleaning", "fraction", 1.0, "cleaning.fraction = 1.0 is out of range"),
        ("cleaning", "fractions", [0.1, 1.5], "has an invalid item 1 (1.5: is out of range)"),
        ("cleaning", "fractions", [0.1, 0.1], "repeats 0.1"),
        ("cleaning", "setting", "digits", "must be one of shapes_swap, pipeline"),
        ("cleaning", "attribute", "colour", "must be one of shape, color, size, position"),
        ("cleaning", "noise_seeds", [0, 0], "repeats 0"),
        ("cleaning", "lam", 0, "cleaning.lam = 0 is out of range"),
        ("tracing", "block_fits", "yes", "tracing.block_fits = 'yes' has the wrong type (str, not true/false)"),
        ("tracing", "block_attribute", "colour", "tracing.block_attribute = 'colour' is not an allowed value"),
        ("tracing", "block_rate", 0.0, "tracing.block_rate = 0.0 is out of range: must be a number > 0 and < 1"),
        ("tracing", "block_n_train", 2, "tracing.block_n_train = 2 is out of range: must be an integer >= 4"),
        ("traceback", "ks", [0], "has an invalid item 0 (0: is out of range)"),
        ("detection_cell", "dataset", "digits", "must be one of shapes"),
    ],
)
def test_bad_values_get_a_clear_message(good, group, key, value, expected) -> None:
    msgs = problems_with(good, group, key, value)
    assert len(msgs) == 1 and expected in msgs[0], msgs
    assert "Fix: set" in msgs[0]


def test_lam_zero_explains_the_strict_minimum(good: dict) -> None:
    (msg,) = problems_with(good, "finetune", "lam", 0)
    assert "strict minimum" in msg and "lam > 0" in msg


def test_null_where_allowed(good: dict) -> None:
    assert problems_with(good, "finetune", "batch_size", None) == []
    assert problems_with(good, "finetune", "n_train", None) == []
    assert "is null" in problems_with(good, "finetune", "lam", None)[0]


def test_cross_checks(good: dict) -> None:
    (msg,) = problems_with(good, "loo", "n_misaligned", 50)
    assert "loo.n_misaligned = 50 is larger than loo.n_pairs = 40" in msg
    (msg,) = problems_with(good, "noise", "kind", "attribute_swap")
    assert "common.dataset = 'digits'" in msg and "Fix:" in msg
    good["common"]["dataset"] = "shapes"
    assert problems_with(good, "noise", "kind", "attribute_swap") == []
    # block mode: a lam below what its fits need, overlapping targets and centring are refused with
    # the fix; head mode ignores them
    good["finetune"]["lam"], good["cleaning"]["lam"], good["ablation"]["lams"] = 0.1, 0.03, [0.03, 0.3, 1.0]
    assert P.validate(good) == []
    (msg, cmsg, amsg) = problems_with(good, "finetune", "mode", "blocks")
    assert "finetune.lam = 0.1 is below 0.3" in msg and "Fix: finetune.lam: 0.3" in msg
    assert "cleaning.lam = 0.03 is below 0.3" in cmsg and "cleaning.setting: pipeline" in cmsg
    assert "ablation.lams holds [0.03]" in amsg and "Fix: ablation.lams: [0.3, 1.0]" in amsg
    good["finetune"]["lam"], good["cleaning"]["setting"] = 0.3, "pipeline"  # pipeline: cleaning.lam unused
    good["ablation"]["lams"] = [0.3, 1.0]
    assert problems_with(good, "finetune", "mode", "blocks") == []
    good["cleaning"]["setting"], good["cleaning"]["lam"] = "shapes_swap", 0.3
    good["finetune"]["targets"] = ["attn", "qv"]
    assert P.validate(good) == []
    (msg,) = problems_with(good, "finetune", "mode", "blocks")
    assert "attn already adapts q and v" in msg and "Fix:" in msg
    good["finetune"]["targets"] = ["qv", "mlp"]
    assert problems_with(good, "finetune", "mode", "blocks") == []
    good["finetune"]["centre"] = True
    (msg,) = problems_with(good, "finetune", "mode", "blocks")
    assert "finetune.centre: false" in msg


def test_empty_groups_and_missing_groups(good: dict) -> None:
    good["detect"] = None  # `detect:` with nothing after it
    assert P.validate(good) == []
    good["detect"] = {"x": 1}
    assert "This group takes no keys" in P.validate(good)[0]
    del good["summary"]
    assert any("group 'summary' is missing" in m for m in P.validate(good))


def test_injected_values_are_checked_per_stage() -> None:
    P.check_injected({"rate": 0.2, "kind": "systematic_swap", "noise_seed": 1, "out_dir": "x"},
                     ["finetune", "detection_cell"])
    with pytest.raises(P.ParamsError, match=r"finetune\.lam = -1"):
        P.check_injected({"lam": -1}, ["finetune", "detection_cell"])
    with pytest.raises(P.ParamsError, match=r"common\.seed = 1\.5"):
        P.check_injected({"seed": 1.5}, ["loo"], {"seed"})
    with pytest.raises(P.ParamsError, match=r"noise\.rate = 1"):
        P.check_injected({"rate": 1}, ["noise"])
    P.check_injected({"anything": object()}, ["toy"])  # unknown to the schema: left to the notebook


def test_command_line_and_marker(tmp_path: Path, good: dict) -> None:
    ok_file = tmp_path / "out" / "params.ok"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(good))
    cmd = [sys.executable, "-m", "ecif.kit.params", "check", "--params", str(params_file), "--ok-file", str(ok_file)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - start
    print(f"\n`python -m ecif.kit.params check` took {elapsed:.2f} s (interpreter start included)")
    assert proc.returncode == 0, proc.stderr
    first = ok_file.read_bytes()
    good["noise"]["rate"] = 0.3  # another valid value: the marker stays byte-identical
    params_file.write_text(yaml.safe_dump(good))
    assert subprocess.run(cmd, capture_output=True, check=False, cwd=ROOT).returncode == 0
    assert ok_file.read_bytes() == first == P.OK_TEXT.encode()
    good["noise"]["rate"] = 1.5
    params_file.write_text(yaml.safe_dump(good))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 2 and "noise.rate = 1.5" in proc.stderr
    assert not ok_file.exists()
    params_file.write_text("noise: [unclosed\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_schema_agrees_with_the_data_modules() -> None:
    from ecif.data import datasets, noise, shifts

    assert P.VISUAL_SHIFTS == shifts.VISUAL and P.TEXT_SHIFTS == shifts.TEXT
    assert set(shifts.LEVELS["blur"]) and all(len(v) == 3 for v in shifts.LEVELS.values())  # levels 1..3
    assert P.DATASETS == datasets.EMBEDDED + datasets.TORCHVISION
    assert P.EMBEDDED_DATASETS == datasets.EMBEDDED
    assert P.NOISE_KINDS == noise.KINDS
    assert datasets.load_dataset("shapes", sizes={"pretrain": 4, "train": 4, "val": 4, "test": 4}).spec.compositional
    assert not datasets.load_dataset("digits", sizes={"pretrain": 4, "train": 4, "val": 4, "test": 4}).spec.compositional


def _notebook_parameters() -> set[str]:
    names: set[str] = set()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                for node in ast.walk(ast.parse("".join(cell["source"]))):
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                        names.add(node.id)
    return names


def test_every_schema_key_is_a_notebook_parameter() -> None:
    defined = _notebook_parameters()
    for group, keys in P.SCHEMA.items():
        for key in keys:
            assert key in defined, f"{group}.{key} is in the schema but no notebook defines {key!r}"
    assert set(P.OVERRIDES) <= defined


def test_dvc_runs_the_check_first() -> None:
    """Stage check_params reads every group, and every other stage depends on its marker."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    check = stages["check_params"]
    assert check["cmd"].startswith("python -m ecif.kit.params check")
    marker = next(iter(check["outs"][0])) if isinstance(check["outs"][0], dict) else check["outs"][0]
    assert f"--ok-file {marker}" in check["cmd"]
    assert set(check["params"]) == set(P.SCHEMA)
    for name, stage in stages.items():
        if name != "check_params":
            assert marker in stage["deps"], f"stage {name} does not depend on {marker}"


# ------------------------------------------------------------- the model and device switches


def test_encoder_values(good: dict) -> None:
    assert good["common"]["encoder"] == "embedded" and good["common"]["device"] == "cpu"
    for ok in ("embedded", "ViT-B-32:laion2b_s34b_b79k", "ViT-B-32:openai", "RN50:/w/model.pt", "/models/clip"):
        assert not problems_with(good, "common", "encoder", ok), ok
    (msg,) = problems_with(good, "common", "encoder", "ViT-B-32")
    assert "common.encoder = 'ViT-B-32' is not a valid encoder value" in msg and "ViT-B-32:openai" in msg
    (msg,) = problems_with(good, "common", "device", "gpu")
    assert "common.device = 'gpu'" in msg and "cpu, cuda" in msg


def test_cuda_without_a_gpu_is_refused(good: dict, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    good["common"]["device"] = "cuda"
    assert not P.validate(good)  # a valid value ...
    (msg,) = P.environment_problems(good)  # ... that this machine cannot honour
    assert "common.device = 'cuda'" in msg and "torch.cuda.is_available() is false" in msg and "set common.device to cpu" in msg
    with pytest.raises(P.ParamsError, match="torch.cuda.is_available"):
        P.check_environment(good)
    good["common"]["device"] = "cpu"
    assert P.environment_problems(good) == []


def test_missing_checkpoint_stops_the_check_and_writes_nothing(tmp_path: Path, good: dict) -> None:
    """`dvc repro`'s first stage refuses a missing checkpoint: exit 2, the message, no artifacts/ written."""
    good["common"]["encoder"] = f"ViT-B-32:{tmp_path}/weights/open_clip_pytorch_model.bin"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(good))
    proc = subprocess.run([sys.executable, "-m", "ecif.kit.params", "check", "--ok-file", "artifacts/params.ok"],
                          capture_output=True, text=True, check=False, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "open_clip_pytorch_model.bin' for ViT-B-32 does not exist" in proc.stderr
    assert "looked from the working directory" in proc.stderr and "Nothing was run" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_scheduler_values(good: dict) -> None:
    from ecif.experiments import distributed

    assert good["common"]["scheduler"] is None  # serial by default
    assert P.SCHEDULER_ENV == distributed.ENV_VAR and P.SCHEDULER_FORMS == distributed.FORMS
    for value in ("local", "local:2", "tcp://10.0.0.5:8786", "tls://sched:8786", "null", "serial",
                  "locale", "local:0", "10.0.0.5:8786", "http://x:1"):
        try:
            distributed.resolve_address(value, env=False)
            accepted = True
        except ValueError:
            accepted = False
        assert (not problems_with(good, "common", "scheduler", value)) == accepted, value  # the same rule
    (msg,) = problems_with(good, "common", "scheduler", "10.0.0.5:8786")
    assert "common.scheduler = '10.0.0.5:8786' is not a scheduler" in msg and "tcp://host:port" in msg
    (msg,) = problems_with(good, "common", "scheduler", 4)
    assert "common.scheduler" in msg
