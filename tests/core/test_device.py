"""Device placement: core and the experiments compute where the problem's data lives (issue 10.5).

A static check reads the sources of ``ecif/core`` and ``ecif/experiments`` and refuses any
tensor factory call that does not say where its tensor goes (a ``device=`` keyword, or an
immediate ``.to(...)``); a behavioural check runs the fit and the influence scores with the
device given explicitly and on a GPU when there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from ecif.core.batching import BatchingProtocol
from ecif.core.evaluate import validation_gradient
from ecif.core.fit import fit
from ecif.core.heads import LinearHeads, LoRAHeads
from ecif.core.influence import ECIF
from ecif.core.objective import ContrastiveObjective
from ecif.data.synthetic import synthetic_pairs

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("ecif/core", "ecif/experiments")

#: ``torch.<name>(...)`` calls that create a tensor (or a generator) and so must say where.
FACTORIES = frozenset({
    "zeros", "ones", "eye", "arange", "empty", "full", "randn", "rand", "randint", "randperm", "tensor",
    "as_tensor", "linspace", "from_numpy", "Generator",
})

#: Justified exceptions: ``(path, enclosing function, factory) -> reason``. None needed today:
#: every factory call in core and the experiments names its device. Add an entry only with a
#: reason the tensor can never meet data on another device.
ALLOWED: dict[tuple[str, str, str], str] = {}


def violations(source: str, path: str = "<snippet>") -> list[tuple[str, str, str, int]]:
    """``(path, enclosing function, factory, line)`` of each ``torch.<factory>(...)`` call in
    ``source`` with no ``device=`` keyword that is not immediately moved with ``.to(...)``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        up = parents.get(node)
        if isinstance(up, ast.Attribute) and up.attr == "to" and isinstance(parents.get(up), ast.Call):
            continue  # torch.from_numpy(a).to(device)
        scope, p = "<module>", up
        while p is not None:
            if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope = p.name
                break
            p = parents.get(p)
        found.append((path, scope, node.func.attr, node.lineno))
    return sorted(found, key=lambda v: v[3])


def _sources():
    for folder in CHECKED:
        for f in sorted((ROOT / folder).glob("*.py")):
            yield f.relative_to(ROOT).as_posix(), f.read_text()


def test_every_tensor_factory_names_its_device():
    bad = [v for path, src in _sources() for v in violations(src, path) if v[:3] not in ALLOWED]
    assert not bad, ("tensor factory calls without device= (create them on the data's device, e.g. "
                     "device=x.device, or draw random numbers on the CPU and .to(device)):\n"
                     + "\n".join(f"  {p}:{line} in {fn}: torch.{name}" for p, fn, name, line in bad))


def test_the_allow_list_is_not_stale():
    used = {v[:3] for path, src in _sources() for v in violations(src, path)}
    assert set(ALLOWED) <= used, f"allow-list entries no longer needed: {sorted(set(ALLOWED) - used)}"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_the_check_catches_a_violation():
    snippet = (
        "import torch\n"
        "def f(x):\n"
        "    a = torch.zeros(3, dtype=torch.float64)\n"           # bad: lands on the CPU
        "    b = torch.zeros(3, device=x.device)\n"               # good
        "    c = torch.from_numpy(idx).to(x.device)\n"            # good: moved at once
        "    d = torch.from_numpy(idx)\n"                         # bad
        "    g = torch.Generator().manual_seed(0)\n"              # bad: say device='cpu'
        "    h = torch.Generator(device='cpu').manual_seed(0)\n"  # good: a CPU generator
        "    return torch.as_tensor(x) + torch.zeros_like(x)\n"   # bad (as_tensor); *_like is fine
    )
    found = violations(snippet)
    assert [(fn, name, line) for _, fn, name, line in found] == [
        ("f", "zeros", 3), ("f", "from_numpy", 6), ("f", "Generator", 7), ("f", "as_tensor", 9)]


# ------------------------------------------------------------------ behaviour


def _run(kind: str, device=None) -> dict[str, np.ndarray]:
    """Fit a tiny problem and score it (dense and CG solves); ``device=None``: the default path
    (numpy inputs, no device named anywhere)."""
    d = synthetic_pairs(48, n_val=24, d_img=5, d_txt=4, width=3, shuffle_rate=0.2, seed=2)
    kw = {} if device is None else {"device": device}
    if kind == "lora":
        param = LoRAHeads(d.w_img0, d.w_txt0, d.log_scale0, rank=2, seed=3, **kw)
    else:
        param = LinearHeads(d.w_img0, d.w_txt0, d.log_scale0, **kw)
    obj = ContrastiveObjective(param, d.x, d.y, BatchingProtocol.from_seed(48, 16, 0), lam=0.2)
    val = ContrastiveObjective(param, d.x_val, d.y_val, BatchingProtocol.from_seed(24, 12, 1))
    res = fit(obj, gtol=1e-10)
    assert res.converged, res.summary()
    g = validation_gradient(val, res.theta)
    out = {"theta0": param.theta0, "theta": res.theta, "val_gradient": g}
    for solver in ("dense", "cg"):
        engine = ECIF(obj, res.theta, solver=solver)
        out.update({f"{solver}_{v}": s for v, s in engine.influence_scores(g).items()})
        out[f"{solver}_shift"] = engine.param_shift(np.array([0, 5]))
    out["self"] = ECIF(obj, res.theta, solver="dense").self_influence([1, 2, 3])
    if device is not None:
        assert all(t.device == torch.device(device) for t in out.values())
        assert obj.device == torch.device(device) and obj.index.device == torch.device(device)
    return {k: t.detach().cpu().numpy() for k, t in out.items()}


@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_explicit_cpu_device_is_bit_identical(kind):
    default, explicit = _run(kind), _run(kind, "cpu")
    assert default.keys() == explicit.keys()
    for k in default:
        np.testing.assert_array_equal(explicit[k], default[k], err_msg=k)


def test_lora_init_is_drawn_on_the_cpu():
    """``theta0`` does not depend on where the heads live (the generator runs on the CPU)."""
    w_img, w_txt = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a = LoRAHeads(w_img, w_txt, 1.0, rank=2, seed=7)
    b = LoRAHeads(w_img.numpy(), w_txt.numpy(), 1.0, rank=2, seed=7, device="cpu")
    assert a.device == b.device == torch.device("cpu") and torch.equal(a.theta0, b.theta0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_cuda_matches_cpu(kind):
    cpu, gpu = _run(kind, "cpu"), _run(kind, "cuda")
    np.testing.assert_array_equal(gpu["theta0"], cpu["theta0"])  # init drawn on the CPU
    for k in cpu:
        scale = max(np.abs(cpu[k]).max(), 1e-300)
        assert np.abs(gpu[k] - cpu[k]).max() <= 1e-10 * scale, k
