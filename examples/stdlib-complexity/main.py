"""Rank the most complex functions of the standard library's own sources.

Each module under ``sysconfig.get_paths()["stdlib"]`` is parsed with ``ast``;
a function's complexity is 1 plus its branch points (``if``, loops, ``except``
clauses, boolean operators, comprehension clauses, ``match`` cases), the
usual cyclomatic approximation. Nested functions are ranked on their own.
"""

from __future__ import annotations

import ast
import heapq
import os
import sys
import sysconfig
from pathlib import Path

from kos_see import service

# Test suites and installed third-party packages are not the standard library.
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
ONE_BRANCH = (
    ast.If,
    ast.IfExp,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.ExceptHandler,
    ast.match_case,
)


def stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        # Some distributions ship only bytecode or a zip; say so, not a traceback.
        service.fail(
            f"the standard library sources are not at {root} on this machine "
            "(no os.py there)",
            retryable=False,
        )
    return root


def find_modules(root: Path) -> list[tuple[str, Path]]:
    """(dotted name, file) of every importable .py module, sorted by name."""
    found = []
    for folder, dirs, files in os.walk(root):
        # Only folders that can be packages: skips e.g. config-3.11-x86_64...
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and d.isidentifier()]
        parts = Path(folder).relative_to(root).parts
        for file in files:
            stem = file.removesuffix(".py")
            if file.endswith(".py") and stem.isidentifier():
                dotted = parts if stem == "__init__" else (*parts, stem)
                if dotted:
                    found.append((".".join(dotted), Path(folder, file)))
    return sorted(found)


def select(modules: list[tuple[str, Path]], prefix: str | None, count: int):
    if prefix:
        modules = [
            m for m in modules if m[0] == prefix or m[0].startswith(prefix + ".")
        ]
        if not modules:
            service.fail(f"no standard library module matches prefix {prefix!r}")
    return modules[:count]


def branches(node: ast.AST) -> int:
    if isinstance(node, ONE_BRANCH):
        return 1
    if isinstance(node, ast.BoolOp):
        return len(node.values) - 1  # `a and b and c` short-circuits twice
    if isinstance(node, ast.comprehension):
        return 1 + len(node.ifs)
    return 0


def complexity(function: ast.AST) -> int:
    score = 1
    todo = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, SCOPES):
            continue  # a nested def or class is scored as its own entry
        score += branches(node)
        todo.extend(ast.iter_child_nodes(node))
    return score


def functions(tree: ast.AST):
    """(qualified name, node) of every function, nested ones included."""
    todo = [(tree, "")]
    while todo:
        node, prefix = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                yield prefix + child.name, child
                todo.append((child, f"{prefix}{child.name}.<locals>."))
            elif isinstance(child, ast.ClassDef):
                todo.append((child, f"{prefix}{child.name}."))
            else:
                todo.append((child, prefix))


def analyse(name: str, path: Path) -> list[dict]:
    # ast.parse on bytes honours each file's own encoding declaration.
    tree = ast.parse(path.read_bytes(), filename=str(path))
    return [
        {
            "module": name,
            "function": qualname,
            "line": node.lineno,
            "complexity": complexity(node),
        }
        for qualname, node in functions(tree)
    ]


def module_summary(name: str, scored: list[dict]) -> dict:
    worst = max((f["complexity"] for f in scored), default=0)
    return {"module": name, "functions": len(scored), "max_complexity": worst}


def main() -> None:
    data = service.inputs()
    root = stdlib_root()
    chosen = select(find_modules(root), data.get("prefix"), data.get("modules", 50))
    summaries, scored_all, skipped = [], [], []
    for i, (name, path) in enumerate(chosen, start=1):
        try:
            scored = analyse(name, path)
        except (SyntaxError, ValueError, OSError) as exc:
            # One unreadable file should not sink the whole ranking.
            skipped.append({"module": name, "error": f"{type(exc).__name__}: {exc}"})
            scored = []
        summaries.append(module_summary(name, scored))
        scored_all.extend(scored)
        service.progress(i, len(chosen), message=name)
    top = heapq.nlargest(
        data.get("top", 10), scored_all, key=lambda f: (f["complexity"], f["module"])
    )
    service.result(
        {
            "python": sys.version.split()[0],
            "stdlib": str(root),
            "modules_scanned": len(chosen),
            "functions_scanned": len(scored_all),
            "top": top,
            "modules": summaries,
            "skipped": skipped,
        }
    )


if __name__ == "__main__":
    main()
