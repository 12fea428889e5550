"""The HTML reports work offline: no remote script or stylesheet, math rendered by inline MathJax.

The browser check (headless Chromium, every host name unresolvable) runs where Chromium is
installed (Debian: ``apt-get install chromium``) and is skipped elsewhere, like the one of the
offline plots template.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbconvert")

from ecif.kit import report_html

REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=", re.IGNORECASE)  # any src: the page is one file
REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)
REMOTE_IMPORT = re.compile(r"@import\s+(?:url\()?[\"']?(?:https?:)?//|import\(\s*[\"']https?:", re.IGNORECASE)


def tiny_notebook(math: bool) -> "nbformat.NotebookNode":
    cells = [nbformat.v4.new_markdown_cell(
        "# Tiny report\n\nEuler: $e^{i\\pi} + 1 = 0$ and\n\n$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$"
        if math else "# Tiny report\n\nNo formulas here.")]
    code = nbformat.v4.new_code_cell("print('hello')")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.execution_count = 1
    cells.append(code)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def assert_offline(html: str) -> None:
    assert not REMOTE_SCRIPT.search(html), REMOTE_SCRIPT.search(html).group(0)
    assert not REMOTE_LINK.search(html), REMOTE_LINK.search(html).group(0)
    assert not REMOTE_IMPORT.search(html), REMOTE_IMPORT.search(html).group(0)
    for host in ("cdnjs.cloudflare.com", "unpkg.com"):  # nbconvert's CDNs (require.js, MathJax 2, widgets)
        assert host not in html, host


def test_math_notebook_has_inline_mathjax_and_no_remote_sources() -> None:
    assert report_html.mathjax_path() is not None, (
        f"{report_html.MATHJAX_PACKAGE} is not installed: run make setup (it is a dependency of the kit)")
    html = report_html.to_html(tiny_notebook(math=True), "tiny")
    assert_offline(html)
    assert "window.MathJax" in html and "MathJax 3" in html
    assert len(html) > 1_000_000  # the MathJax build itself is in the page
    assert "e^{i\\pi}" in html  # the TeX is left for MathJax to typeset
    assert "<title>tiny</title>" in html and "hello" in html


def test_notebook_without_math_gets_no_script_at_all() -> None:
    html = report_html.to_html(tiny_notebook(math=False), "plain")
    assert_offline(html)
    assert "MathJax" not in html and "require" not in html.split("<body", 1)[0]
    assert len(html) < 1_000_000


def test_report_html_export_file(tmp_path: Path) -> None:
    nbformat.write(tiny_notebook(math=True), str(tmp_path / "t.ipynb"))
    out = report_html.export(tmp_path / "t.ipynb", tmp_path / "t.html")
    assert_offline(out.read_text(encoding="utf-8"))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_math_is_typeset_in_chromium_without_network(tmp_path: Path) -> None:
    page = tmp_path / "tiny.html"
    page.write_text(report_html.to_html(tiny_notebook(math=True), "tiny"), encoding="utf-8")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
         f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    dom = proc.stdout
    assert "<body" in dom, proc.stderr[-2000:]
    # MathJax replaced both formulas by SVG (inline and display)
    assert len(re.findall(r"<mjx-container\b", dom)) == 2, proc.stderr[-2000:]
    assert 'display="true"' in dom and "<svg" in dom
    assert "$e^{i\\pi}" not in dom  # no raw TeX left
