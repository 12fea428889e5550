"""requirements.lock pins the whole environment, and every install path uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", line), f"not a plain pin: {line!r}"
        name, version = line.split("==")
        assert canonicalize_name(name) not in pins, f"{name} pinned twice"
        pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("kit", "test", "peers"):
        declared += project["optional-dependencies"][extra]
    pins = lock_pins()
    assert "ecif" not in pins  # the project itself is installed editable, not pinned
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_torch_pins_agree_everywhere() -> None:
    pins = lock_pins()
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
    for path in ("tools/setup-venv.sh", "tools/lock.sh", "environment.yml"):
        text = (ROOT / path).read_text()
        assert "torch==2.14.1" in text and "torchvision==0.29.1" in text, path


def test_setup_and_conda_use_the_lock() -> None:
    setup = (ROOT / "tools/setup-venv.sh").read_text()
    assert "LOCK=requirements.lock" in setup and '-c "$LOCK"' in setup
    assert 'cat pyproject.toml "$LOCK" "$0" | sha256sum' in setup  # the stamp moves with the lock
    conda = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*- -c requirements\.lock$", conda, re.MULTILINE)
    assert "lock:" in (ROOT / "Makefile").read_text()


def test_lock_file_is_sorted() -> None:
    body = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if not line.startswith("#")]
    assert body == sorted(body, key=str.upper), "requirements.lock is not sorted: regenerate it with make lock"
