"""The offline DVC plots template: no network needed, and DVC can fill it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "tools" / "dvc-plots" / "offline.html"


def test_template_has_no_remote_scripts() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    script_tags = re.findall(r"<script\b[^>]*>", html, flags=re.IGNORECASE)
    assert len(script_tags) == 3  # vega, vega-lite, vega-embed, all inline
    for tag in script_tags:
        assert "src" not in tag.lower(), tag
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", html, flags=re.IGNORECASE)
    assert not re.search(r"""<link\b[^>]*href\s*=\s*["']?(https?:)?//""", html, flags=re.IGNORECASE)


def test_template_placeholders() -> None:
    # DVC 3 (dvc-render >= 1) replaces {plot_divs}, {scripts} and {refresh_tag} as plain text.
    html = TEMPLATE.read_text(encoding="utf-8")
    assert html.count("{plot_divs}") == 1
    assert "{scripts}" not in html  # that placeholder would bring back the CDN <script src> tags
    for library in ("vega 5.", "vega-lite 5.", "vega-embed 6."):
        assert f"<script>/* {library}" in html


def test_dvc_render_accepts_template(tmp_path: Path) -> None:
    dvc_render = pytest.importorskip("dvc_render")
    from dvc_render import VegaRenderer, render_html

    renderer = VegaRenderer([{"x": 1, "y": 2}, {"x": 2, "y": 3}], "toy.json", x="x", y="y")
    out = render_html([renderer], tmp_path / "index.html", html_template=TEMPLATE)
    page = Path(out).read_text(encoding="utf-8")
    assert "vegaEmbed(" in page and "{plot_divs}" not in page
    assert not re.search(r"""<script[^>]*src\s*=""", page, flags=re.IGNORECASE)
    # the inlined library code comes through byte for byte
    assert page.count("<script>/* vega") == 3
    del dvc_render


@pytest.mark.slow
def test_renders_offline_in_headless_chromium() -> None:
    """Runs tools/dvc-plots/check_offline.sh where Chromium is installed (not on a bare machine)."""
    import os
    import shutil
    import subprocess
    import sys

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium not installed (apt-get install chromium)")
    if not (Path(sys.prefix) / "bin" / "dvc").exists():
        pytest.skip("dvc not in this environment")
    script = TEMPLATE.parent / "check_offline.sh"
    env = {**os.environ, "VENV_DVC": str(Path(sys.prefix) / "bin" / "dvc")}
    result = subprocess.run(
        ["bash", str(script)], check=False, capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the offline template renders without network" in result.stdout
