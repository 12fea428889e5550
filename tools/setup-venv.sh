#!/usr/bin/env bash
# Create or update the kit's virtual environment; fast no-op when it is already complete.
#
#   tools/setup-venv.sh            (what `make setup`, `make repro` and `make test` run)
#
# Steps: python3 -m venv .venv (if missing) -> pip install the pinned torch pair (if not
# already that version) -> pip install -e '.[kit,test]' -> register the Jupyter kernel `ecif`
# inside the venv. A stamp file records a hash of pyproject.toml and of this script; while
# it matches and a quick import check passes, nothing is installed again.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
STAMP="$VENV/.ecif-setup-stamp"
KERNEL_NAME=ecif
VPY="$VENV/bin/python"

key="$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"

quick_check() {
    # Everything the two commands need is installed (found, not imported: this stays fast).
    [ -x "$VPY" ] &&
        [ -x "$VENV/bin/dvc" ] &&
        [ -f "$VENV/share/jupyter/kernels/$KERNEL_NAME/kernel.json" ] &&
        "$VPY" - <<'PY' 2>/dev/null
import importlib.metadata as md
import importlib.util as iu
missing = [m for m in ("ecif", "papermill", "nbconvert", "nbformat", "ipykernel", "pytest", "yaml", "dvc")
           if iu.find_spec(m) is None]
assert not missing, missing
assert md.version("ecif")
assert md.version("torch").split("+")[0] == "2.14.1", md.version("torch")
assert md.version("torchvision").split("+")[0] == "0.29.1", md.version("torchvision")
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
    "$VPY" -m pip install --disable-pip-version-check "${TORCH_PINS[@]}"
fi

echo "[setup] installing the kit: pip install -e '.[kit,test]'"
"$VPY" -m pip install --quiet --disable-pip-version-check -e '.[kit,test]' "${TORCH_PINS[@]}"

echo "[setup] registering Jupyter kernel '$KERNEL_NAME' in $VENV"
"$VPY" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" --display-name "Python (ecif)" >/dev/null

if ! quick_check; then
    echo "[setup] error: $VENV is still incomplete after installing (see messages above)" >&2
    exit 1
fi
echo "$key" > "$STAMP"
echo "[setup] done: $VENV ready"
