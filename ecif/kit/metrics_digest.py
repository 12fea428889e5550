"""Print metrics files as one ``name  value`` line per number, with full precision.

``dvc metrics show`` puts every file's keys into one table (thousands of characters wide for
the sweep files) and rounds to a fixed number of decimals, so ``fit.grad_norm`` (about 1e-13)
prints as ``0.0``. This prints six significant digits instead, one line per key::

    python -m ecif.kit.metrics_digest metrics/finetune.json metrics/loo.json
    python -m ecif.kit.metrics_digest metrics/detect.json --keep 'ecif|random'

``make repro`` prints the core metrics this way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def flatten(node, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists keep their index: ``a.0``)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {prefix: node}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def fmt(value) -> str:
    """Six significant digits for floats (``1.18265e-13``, not ``0.0``); others as they are."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def digest(paths, keep: str | None = None) -> str:
    lines = []
    for path in paths:
        flat = flatten(json.loads(Path(path).read_text()))
        if keep:
            flat = {k: v for k, v in flat.items() if re.search(keep, k)}
        width = max((len(k) for k in flat), default=0)
        lines.append(f"{path}:")
        lines += [f"  {k:<{width}}  {fmt(v)}" for k, v in flat.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="metrics JSON files")
    parser.add_argument("--keep", help="only keys matching this regular expression")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"metrics_digest: no such file(s): {', '.join(missing)} (run the stages first)", file=sys.stderr)
        return 1
    print(digest(args.paths, args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
