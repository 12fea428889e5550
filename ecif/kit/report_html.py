"""HTML export of executed notebooks that works offline: nothing is loaded from a network.

nbconvert's ``lab`` template loads require.js and MathJax from a CDN (and mermaid and the widget
manager when a notebook needs them), so an exported report opened without a network shows its
math as raw TeX, and waits on scripts that never come. This export uses the same template with
those blocks replaced:

- require.js, the widget manager and mermaid are dropped: the reports' outputs are text, tables
  and PNG images, none of which needs them;
- when the notebook has math (``$``, ``\\(``, ``\\[``, ``\\begin{`` in a markdown cell, or a
  ``text/latex`` output), MathJax 3 (``tex-svg-full.js``: TeX input, SVG output with its fonts
  built in, every TeX extension; about 2.3 MB) is inlined in the page. It comes from the PyPI
  package ``django-static-mathjax`` (Apache-2.0, pinned in ``requirements.lock``), which ships
  MathJax's own build files and has no dependencies; nothing is downloaded at export time.
  Without math, no script is added at all.

Images the markdown refers to by relative path are embedded (``embed_images``), so the page is
one self-contained file.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

MATHJAX_PACKAGE = "django-static-mathjax"  # PyPI name; import name ``mathjax``
MATHJAX_BUILD = "tex-svg-full.js"
TEMPLATE_NAME = "ecif_offline.html.j2"

# The lab template, less every block that loads a script from a URL. ``ecif_math_head`` is the
# inline MathJax (configuration + build) or empty.
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{{ resources.ecif_math_head }}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# The delimiters and numbering of nbconvert's own MathJax set-up, in MathJax 3's terms. The menu
# is off: some of its entries would load further components by URL.
MATHJAX_CONFIG = r"""window.MathJax = {
  tex: {
    inlineMath: [['$', '$'], ['\\(', '\\)']],
    displayMath: [['$$', '$$'], ['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true,
    tags: 'ams'
  },
  svg: {fontCache: 'global'},
  options: {enableMenu: false}
};"""

_MATH_IN_MARKDOWN = re.compile(r"\$|\\\(|\\\[|\\begin\{")


def has_math(nb: Any) -> bool:
    """True if a markdown cell holds TeX delimiters or an output is ``text/latex``."""
    for cell in nb.cells:
        if cell.get("cell_type") == "markdown" and _MATH_IN_MARKDOWN.search(cell.get("source", "")):
            return True
        for output in cell.get("outputs", []) or []:
            if "text/latex" in (output.get("data") or {}):
                return True
    return False


def mathjax_path() -> Path | None:
    """The MathJax build file of the installed ``django-static-mathjax``, or None."""
    spec = importlib.util.find_spec("mathjax")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "static" / "mathjax" / "es5" / MATHJAX_BUILD
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _mathjax_head() -> str:
    path = mathjax_path()
    if path is None:
        return ""
    code = path.read_text(encoding="utf-8")
    if re.search(r"</?script", code, flags=re.IGNORECASE):  # could end the inline <script> early
        print(f"[report_html] warning: {path} contains a <script> tag; math left as TeX", file=sys.stderr)
        return ""
    return (f"<script>\n{MATHJAX_CONFIG}\n</script>\n"
            f"<!-- MathJax 3 ({MATHJAX_BUILD}, Apache-2.0), inlined so that the page works offline -->\n"
            f"<script>{code}</script>\n")


def exporter():
    """An nbconvert HTMLExporter with the offline template."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        template_file=TEMPLATE_NAME,
        extra_loaders=[DictLoader({TEMPLATE_NAME: TEMPLATE})],
        embed_images=True,
    )


def to_html(nb: Any, name: str, path: str | Path | None = None) -> str:
    """The HTML page of notebook node ``nb``, titled ``name``; relative images from ``path``."""
    math = ""
    if has_math(nb):
        math = _mathjax_head()
        if not math:
            print(f"[report_html] warning: {name} has math but MathJax is not installed "
                  f"(pip install {MATHJAX_PACKAGE}, or make setup): it shows as TeX", file=sys.stderr)
    resources = {"metadata": {"name": name, "path": str(path) if path is not None else ""},
                 "ecif_math_head": math}
    body, _ = exporter().from_notebook_node(nb, resources=resources)
    return body


def export(notebook: str | Path, html_path: str | Path, name: str | None = None,
           path: str | Path | None = None) -> Path:
    """Write the offline HTML page of the notebook file ``notebook`` to ``html_path``."""
    import nbformat

    notebook, html_path = Path(notebook), Path(html_path)
    nb = nbformat.read(str(notebook), as_version=4)
    html_path.write_text(to_html(nb, name or notebook.stem, path), encoding="utf-8")
    return html_path
