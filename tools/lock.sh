#!/usr/bin/env bash
# Write requirements.lock: every package of the kit's environment pinned to an exact version,
# as a pip constraints file (`pip install -c requirements.lock ...`, used by tools/setup-venv.sh
# and environment.yml).
#
#   tools/lock.sh            resolve afresh: a throw-away venv gets the pinned torch wheels and
#                            `.[kit,test,peers]` without constraints (the newest compatible releases),
#                            is frozen, then removed. This is `make lock`; it needs the package
#                            registry and takes a few minutes.
#   tools/lock.sh VENV       freeze an existing venv as it is (e.g. .venv after a hand-made
#                            upgrade that the tests passed with).
#
# The project itself (installed editable) is left out, and so is anything pip cannot pin by
# version (a package installed from a local file or URL makes this script fail).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
OUT="${LOCK_FILE:-requirements.lock}"

if [ $# -ge 1 ]; then
    venv="$1"
    cleanup=""
else
    venv="$(mktemp -d)/venv"
    cleanup="$(dirname "$venv")"
    trap 'rm -rf "$cleanup"' EXIT
    echo "[lock] resolving in a throw-away venv: $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH_PINS[@]}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[kit,test,peers]' "${TORCH_PINS[@]}"
fi

frozen="$("$venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check)"
if grep -q ' @ ' <<<"$frozen"; then
    echo "[lock] error: these packages are not installed from the registry, so they cannot be pinned:" >&2
    grep ' @ ' <<<"$frozen" >&2
    exit 1
fi
pyver="$("$venv/bin/python" -c 'import platform, sys; print("%d.%d %s %s" % (*sys.version_info[:2], platform.system(), platform.machine()))')"
{
    echo "# Every package of the ECIF kit's environment, pinned: a pip constraints file."
    echo "# Used by tools/setup-venv.sh and environment.yml (pip install -c requirements.lock ...)."
    echo "# Written by tools/lock.sh (make lock) for Python $pyver; do not edit by hand."
    echo "# Packages whose markers exclude a platform (nvidia-*, triton) are simply not installed there."
    LC_ALL=C sort -f <<<"$frozen"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "[lock] wrote $OUT ($(grep -vc '^#' "$OUT") packages)"
