#!/usr/bin/env bash
# Create or update the kit's virtual environment; fast no-op when it is already complete.
#
#   tools/setup-venv.sh            (what `make setup`, `make repro` and `make test` run)
#
# Steps: python3 -m venv .venv (if missing) -> pip install the pinned torch pair (if not
# already that version) -> pip install -e '.[kit,test,peers]' -> register the Jupyter kernel `ecif`
# inside the venv (python -m ecif.kit.kernel: it starts in the repository root). Every pip
# install is constrained by requirements.lock (`-c`), which pins every package of the
# environment to one version (refresh it with `make lock`). A stamp file
# records a hash of pyproject.toml, requirements.lock and this script; while it matches and a
# quick check passes (imports found, installed versions equal to the lock), nothing is
# installed again.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
LOCK=requirements.lock
STAMP="$VENV/.ecif-setup-stamp"
KERNEL_NAME=ecif
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -c "$LOCK")

[ -f "$LOCK" ] || { echo "[setup] error: $LOCK is missing (git checkout $LOCK, or make lock)" >&2; exit 1; }
key="$(cat pyproject.toml "$LOCK" "$0" | sha256sum | cut -d' ' -f1)"

quick_check() {
    # Everything the two commands need is installed (found, not imported: this stays fast).
    [ -x "$VPY" ] &&
        [ -x "$VENV/bin/dvc" ] &&
        [ -f "$VENV/share/jupyter/kernels/$KERNEL_NAME/kernel.json" ] &&
        grep -q '"ecif.kit.kernel"' "$VENV/share/jupyter/kernels/$KERNEL_NAME/kernel.json" &&
        ECIF_LOCK="$LOCK" "$VPY" - <<'PY' 2>/dev/null
import importlib.metadata as md
import importlib.util as iu
import os
import re
missing = [m for m in ("ecif", "papermill", "nbconvert", "nbformat", "ipykernel", "pytest", "yaml", "dvc", "mathjax")
           if iu.find_spec(m) is None]
assert not missing, missing
assert md.version("ecif")
assert md.version("torch").split("+")[0] == "2.14.1", md.version("torch")
assert md.version("torchvision").split("+")[0] == "0.29.1", md.version("torchvision")
# every installed package that the lock pins has the locked version
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
installed = {norm(d.metadata["Name"]): d.version for d in md.distributions()}
for line in open(os.environ["ECIF_LOCK"]):
    if "==" in line and not line.startswith("#"):
        name, version = line.strip().split("==", 1)
        have = installed.get(norm(name))
        assert have is None or have.split("+")[0] == version.split("+")[0], (name, have, version)
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && quick_check; then
    echo "[setup] $VENV is up to date"
    exit 0
fi

if [ ! -x "$VPY" ]; then
    echo "[setup] creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

pyver="$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
    echo "[setup] warning: $VENV uses Python $pyver; the pinned torch wheels are expected for 3.11" >&2
fi

if "$VPY" - <<'PY' 2>/dev/null
import importlib.metadata as md
ok = md.version("torch").split("+")[0] == "2.14.1" and md.version("torchvision").split("+")[0] == "0.29.1"
raise SystemExit(0 if ok else 1)
PY
then
    echo "[setup] ${TORCH_PINS[*]} already installed"
else
    echo "[setup] installing ${TORCH_PINS[*]} (large; taken from local disk where available)"
    "${PIP[@]}" "${TORCH_PINS[@]}"
fi

echo "[setup] installing the kit: pip install -c $LOCK -e '.[kit,test,peers]'"
"${PIP[@]}" --quiet -e '.[kit,test,peers]' "${TORCH_PINS[@]}"

echo "[setup] registering Jupyter kernel '$KERNEL_NAME' in $VENV"
# ecif.kit.kernel: an ipykernel that starts in the repository root, so notebooks opened in Lab
# find data/, artifacts/ and params.yaml wherever Lab started the kernel
"$VPY" -m ecif.kit.kernel install --prefix "$VENV" >/dev/null

if ! quick_check; then
    echo "[setup] error: $VENV is still incomplete after installing (see messages above)" >&2
    exit 1
fi
echo "$key" > "$STAMP"
echo "[setup] done: $VENV ready"
