"""``python -m ecif.kit.metrics_digest``: one line per metric, full precision (make repro uses it)."""

from __future__ import annotations

import json
from pathlib import Path

from ecif.kit import metrics_digest

ROOT = Path(__file__).resolve().parents[2]


def test_digest_keeps_small_numbers(tmp_path: Path, capsys) -> None:
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps({"fit": {"converged": True, "grad_norm": 1.1825549685775484e-13, "n_train": 359},
                                "hessian": {"min_eigenvalue": 0.0166509361254856}}))
    assert metrics_digest.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "fit.grad_norm" in out and "1.18255e-13" in out and "0.0166509" in out
    assert max(len(line) for line in out.splitlines()) < 100
    assert metrics_digest.main([str(path), "--keep", "grad"]) == 0
    assert "n_train" not in capsys.readouterr().out
    assert metrics_digest.main([str(tmp_path / "missing.json")]) == 1


def test_make_repro_prints_the_digest() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m ecif.kit.metrics_digest metrics/finetune.json metrics/loo.json" in makefile
    assert "dvc metrics show metrics/finetune.json" not in makefile
