"""Prints one JSON line per standard library module: its name and the first
paragraph of its docstring, read from the source with ``ast`` (no import).

    python examples/stdlib-search-data/index.py \
        | kos-see vectors add stdlib_docs --file -
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path


def first_paragraph(doc: str) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split())


def modules(limit: int | None = None) -> list[dict[str, object]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.glob("*.py")):
        if path.stem.startswith("_") or path.stem == "this":
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_bytes()))
        except (SyntaxError, ValueError):
            continue
        if doc and len(first_paragraph(doc)) >= 20:
            text = first_paragraph(doc)[:500]
            found.append({"key": path.stem, "text": text, "metadata": {}})
    return found[:limit]


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    for item in modules(limit):
        print(json.dumps(item))
