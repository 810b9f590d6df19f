"""Count words in texts that ship with Python, reporting progress per chunk.

The corpus is Python's own ``LICENSE.txt`` followed by every docstring (module,
class and function) of the first standard library modules in name order. Each
text is cut into chunks of a few lines; every counted chunk reports progress,
and about every tenth of the way a partial output shows the current leaders.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from kos_see import service

WORD = re.compile(r"[a-z][a-z']*[a-z]")
# Without these the leaders would be the same in any English text.
COMMON_WORDS = """
an and any are as at be been but by can do does for from has have if in into
is it its may no not of on or other such that the their then there these this
those to was were which will with would you your all also only so than use used
"""
COMMON = frozenset(COMMON_WORDS.split())
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
PARTIAL_OUTPUTS = 10


def license_candidates(stdlib: Path) -> list[Path]:
    """Where Python keeps its license on this machine, most telling first."""
    # The `license` builtin (added by site) knows the places its build uses;
    # relative entries would point into our working directory, so not those.
    known = getattr(getattr(builtins, "license", None), "_Printer__filenames", [])
    paths = [Path(p) for p in known if os.path.isabs(p)]
    paths += [stdlib / "LICENSE.txt", stdlib.parent / "LICENSE.txt"]
    # Debian's python3 drops LICENSE.txt but keeps the text as its copyright file.
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths.append(Path(f"/usr/share/doc/python{minor}/copyright"))
    return list(dict.fromkeys(paths))


def find_license(stdlib: Path) -> Path:
    candidates = license_candidates(stdlib)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    service.fail(f"Python's license text is not on this machine; looked at {looked}")
    raise AssertionError("unreachable: fail() exits")


def module_files(stdlib: Path, count: int) -> list[tuple[str, Path]]:
    found = []
    for folder, dirs, files in os.walk(stdlib):
        # Test suites and installed packages are not the standard library.
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and d.isidentifier()]
        rel = Path(folder).relative_to(stdlib).parts
        for file in files:
            if file.endswith(".py") and file[:-3].isidentifier():
                found.append((".".join((*rel, file[:-3])), Path(folder, file)))
    return sorted(found)[:count]


def docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return ""  # one odd file should not stop the count
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds))
    return "\n".join(d for d in docs if d)


def read_sources(
    license_path: Path, modules: list[tuple[str, Path]]
) -> Iterator[tuple[str, str]]:
    """(name, text) of each text to count, the license first. Lazy, so that
    progress follows the reading, which is most of the work."""
    yield "LICENSE", license_path.read_text(encoding="utf-8", errors="replace")
    for name, path in modules:
        yield name, docstrings(path)


def words(text: str, skip_common: bool) -> list[str]:
    found = WORD.findall(text.lower())
    return [w for w in found if w not in COMMON] if skip_common else found


class Tally:
    def __init__(self, skip_common: bool) -> None:
        self.skip_common = skip_common
        self.total: Counter[str] = Counter()
        self.license: Counter[str] = Counter()
        self.chunks = 0

    def add(self, source: str, text: str) -> None:
        found = words(text, self.skip_common)
        self.total.update(found)
        if source == "LICENSE":
            self.license.update(found)
        self.chunks += 1


def count_source(
    tally: Tally, done: int, count: int, source: tuple[str, str], size: int
) -> None:
    """Count one source chunk by chunk; progress advances a fraction per chunk."""
    name, text = source
    lines = text.splitlines() or [""]
    parts = range(0, len(lines), size)
    for j, start in enumerate(parts, start=1):
        tally.add(name, "\n".join(lines[start : start + size]))
        service.progress(
            done + j / len(parts), count, message=f"{name} chunk {j}/{len(parts)}"
        )


def main() -> None:
    data = service.inputs()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tally, top = Tally(data.get("skip_common", True)), data.get("top", 20)
    license_path = find_license(stdlib)
    modules = module_files(stdlib, data.get("modules", 250))
    count = 1 + len(modules)
    every = max(1, count // PARTIAL_OUTPUTS)
    for done, source in enumerate(read_sources(license_path, modules)):
        count_source(tally, done, count, source, data.get("chunk_lines", 40))
        if (done + 1) % every == 0 or done + 1 == count:
            service.output(
                {
                    "sources_done": done + 1,
                    "sources": count,
                    "leaders": tally.total.most_common(5),
                }
            )
    service.result(
        {
            "license_file": str(license_path),
            "modules": len(modules),
            "chunks": tally.chunks,
            "words": tally.total.total(),
            "distinct_words": len(tally.total),
            "top": tally.total.most_common(top),
            "license_top": tally.license.most_common(top),
        }
    )


if __name__ == "__main__":
    main()
