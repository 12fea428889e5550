#!/usr/bin/env bash
# Check that tools/dvc-plots/offline.html renders DVC plots with no network at all.
#
#   tools/dvc-plots/check_offline.sh [screenshot.png]
#
# Needs Chromium (Debian: apt-get install chromium) and the kit's .venv (for dvc). Builds a
# throw-away DVC project in a temporary directory, renders one plot with the offline template
# and, for contrast, with DVC's default CDN template, then loads both pages in headless
# Chromium with every host name unresolvable. Passes when the offline page has a drawn
# vega-embed <canvas> and the default one has none (it cannot fetch its scripts).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TEMPLATE="$ROOT/tools/dvc-plots/offline.html"
DVC="${VENV_DVC:-$ROOT/.venv/bin/dvc}"
BROWSER="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
SHOT="${1:+$(realpath -m "$1")}"
[ -n "$BROWSER" ] || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }
[ -x "$DVC" ] || { echo "$DVC not found: run make setup first" >&2; exit 2; }
export DVC_NO_ANALYTICS=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
git init -q . && "$DVC" init -q
python3 - <<'PY'
import json
rows = [{"k": k, "precision": round(1 / (1 + 0.1 * k), 4)} for k in range(1, 21)]
json.dump(rows, open("curve.json", "w"))
PY
printf 'plots:\n  - curve.json:\n      x: k\n      y: precision\n      title: precision at k\n' > dvc.yaml
"$DVC" plots show -q --html-template "$TEMPLATE" -o offline >/dev/null
"$DVC" plots show -q -o default >/dev/null

chrome() {
    "$BROWSER" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --no-first-run --disable-sync --disable-quic \
        --user-data-dir="$(mktemp -d -p "$work")" --host-resolver-rules="MAP * ~NOTFOUND" \
        --virtual-time-budget=5000 --window-size=900,600 "$@" 2>/dev/null
}
canvases() { chrome --dump-dom "file://$work/$1/index.html" | grep -c '<canvas' || true; }

offline="$(canvases offline)"
default="$(canvases default)"
echo "drawn plots with the offline template: $offline; with DVC's default CDN template: $default"
if [ -n "$SHOT" ]; then
    chrome --screenshot="$SHOT" "file://$work/offline/index.html" >/dev/null
    echo "screenshot: $SHOT"
fi
if [ "$offline" -ge 1 ] && [ "$default" -eq 0 ]; then
    echo "OK: the offline template renders without network"
else
    echo "FAIL: expected >=1 drawn plot offline and none with the CDN template" >&2
    exit 1
fi
