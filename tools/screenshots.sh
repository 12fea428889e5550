#!/usr/bin/env bash
# Screenshots of notebook 00 and of the plots page, taken in headless Chromium with no network.
#
#   tools/screenshots.sh [OUT_DIR]        (make screenshots; OUT_DIR default: docs/screenshots)
#
# Writes OUT_DIR/notebook00_1.png .. notebook00_3.png and OUT_DIR/plots_1.png .. plots_3.png:
# consecutive 1400 x 1400 pixel screens from the top of each page.
#
# 1. Notebook 00 is executed (papermill, kernel `ecif` when installed, else python3) into a
#    temporary folder, and exported to HTML by the kit's offline export (ecif.kit.report_html:
#    MathJax inlined, no CDN script). notebooks/ is not modified.
# 2. The plots page is `dvc plots show` with the offline template tools/dvc-plots/offline.html
#    (vega libraries inlined), written to a temporary folder (not dvc_plots/). It needs the
#    pipeline's outputs: plots/*.csv and the reports/figures/*.png of `make repro`.
# 3. Each page is loaded from file:// in headless Chromium with every host name unresolvable and
#    every non-loopback request sent to a closed proxy port, in a fresh profile, with a virtual
#    time budget so that MathJax and the vega charts are drawn before the picture is taken. One
#    tall screenshot per page is cut into screens (Pillow, from the venv).
#
# Needs Chromium (Debian: apt-get install chromium; or CHROMIUM=/path/to/chrome) and the kit's
# venv (make setup). About a minute, most of it executing notebook 00.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/docs/screenshots}")"
VENV="$(realpath -m "${VENV:-$ROOT/.venv}")"
PY="$VENV/bin/python"
DVC="$VENV/bin/dvc"
BROWSER="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
WIDTH=1400          # window width, pixels
SCREEN=1400         # height of one screen, pixels
NB_SCREENS=3        # screens of notebook 00
PLOT_SCREENS=3      # screens of the plots page
[ -n "$BROWSER" ] || { echo "chromium not found: apt-get install chromium, or set CHROMIUM=" >&2; exit 2; }
[ -x "$PY" ] && [ -x "$DVC" ] || { echo "$VENV not set up: run make setup first" >&2; exit 2; }
[ -d "$ROOT/reports/figures" ] || { echo "no reports/figures/: run make repro first" >&2; exit 2; }
export DVC_NO_ANALYTICS=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

echo "[screenshots] executing notebook 00"
cd "$ROOT"
ECIF_ROOT="$ROOT" "$PY" - "$work" <<'PY'
import sys
from pathlib import Path

import papermill as pm

from ecif.kit import report_html
from ecif.kit.notebook_runner import pick_kernel

work = Path(sys.argv[1])
executed = work / "00_influence_from_zero.ipynb"
pm.execute_notebook("notebooks/00_influence_from_zero.ipynb", str(executed), kernel_name=pick_kernel(),
                    cwd=".", progress_bar=False)
report_html.export(executed, work / "notebook00.html")
PY

echo "[screenshots] dvc plots show with $ROOT/tools/dvc-plots/offline.html"
"$DVC" plots show -q --html-template tools/dvc-plots/offline.html -o "$work/plots" >/dev/null

# Neither page may name a script, style sheet, image or frame by http(s) URL (they would not load).
for page in "$work/notebook00.html" "$work/plots/index.html"; do
    if grep -Eq '<(script|link|img|iframe)[^>]*(src|href)="https?:' "$page"; then
        echo "$page loads something from the network: the screenshot would miss it" >&2; exit 1
    fi
done

# shoot PAGE.html NAME SCREENS: OUT/NAME_1.png .. OUT/NAME_SCREENS.png
shoot() {
    local tall="$work/$2.png"
    "$BROWSER" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d -p "$work")" \
        --host-resolver-rules="MAP * ~NOTFOUND" --proxy-server=127.0.0.1:9 --proxy-bypass-list="<-loopback>" \
        --hide-scrollbars --virtual-time-budget=15000 --window-size="$WIDTH,$((SCREEN * $3))" \
        --screenshot="$tall" "file://$1" >/dev/null 2>&1
    "$PY" - "$tall" "$OUT/$2" "$SCREEN" "$3" <<'PY'
import sys

from PIL import Image

tall, stem, screen, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
image = Image.open(tall).convert("RGB")
for i in range(n):
    image.crop((0, i * screen, image.width, (i + 1) * screen)).save(f"{stem}_{i + 1}.png", optimize=True)
    print(f"    {stem}_{i + 1}.png")
PY
}

echo "[screenshots] headless Chromium, no network -> $OUT"
shoot "$work/notebook00.html" notebook00 "$NB_SCREENS"
shoot "$work/plots/index.html" plots "$PLOT_SCREENS"
