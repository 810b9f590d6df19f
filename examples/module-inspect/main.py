"""Describe one standard library module: public names, docstring, source size.

A function entrypoint: the engine calls ``run`` with the task's input and
stores its return value as the result. Names outside the standard library
fail through ``service.fail`` with ``retryable=False``: asking again would not
make the module appear.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from types import ModuleType

from kos_see import service

# Importing these does something besides defining names (opens a browser,
# starts IDLE), which an inspection must not do.
SIDE_EFFECTS = frozenset({"antigravity", "idlelib.idle"})


def check_name(name: str) -> None:
    top = name.partition(".")[0]
    if top not in sys.stdlib_module_names:
        service.fail(
            f"no module named {name!r} in the standard library", retryable=False
        )
    if name in SIDE_EFFECTS or "__main__" in name.split("."):
        service.fail(
            f"{name!r} is not imported here: importing it runs a program",
            retryable=False,
        )


def find(name: str) -> importlib.machinery.ModuleSpec:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # the parent package itself is missing
        spec = None
    if spec is None:
        # Known by name but absent: e.g. winreg on Linux, or json.nope.
        service.fail(
            f"no module named {name!r} in the standard library on this machine "
            f"({sys.platform}, Python {sys.version.split()[0]})",
            retryable=False,
        )
    return spec


def load(name: str) -> tuple[ModuleType, list[str]]:
    """The imported module and the warnings its import raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # e.g. tkinter without its C library
            service.fail(
                f"standard library module {name!r} failed to import: "
                f"{type(exc).__name__}: {exc}",
                retryable=False,
            )
    return module, [f"{w.category.__name__}: {w.message}" for w in caught]


def public_names(module: ModuleType) -> tuple[list[str], str]:
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return sorted(str(n) for n in declared), "__all__"
    return sorted(n for n in dir(module) if not n.startswith("_")), "dir"


def kind_of(spec: importlib.machinery.ModuleSpec, path: str | None) -> str:
    if spec.origin in ("built-in", "frozen"):
        return spec.origin
    if path and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return "extension"
    return "source" if path else "namespace"


def source_facts(module: ModuleType, spec: importlib.machinery.ModuleSpec) -> dict:
    path = getattr(module, "__file__", None)
    facts = {
        "file": path,
        "kind": kind_of(spec, path),
        "source_bytes": None,
        "source_lines": None,
    }
    # Frozen modules of 3.11+ still name their .py file; measure it if present.
    if path and path.endswith(".py") and os.path.isfile(path):
        with open(path, "rb") as handle:
            source = handle.read()
        facts.update(source_bytes=len(source), source_lines=source.count(b"\n"))
    return facts


def run(inputs: dict) -> dict:
    name = inputs["module"]
    check_name(name)
    spec = find(name)
    module, caught = load(name)
    names, names_from = public_names(module)
    doc = (module.__doc__ or "").strip()
    return {
        "module": name,
        "package": spec.submodule_search_locations is not None,
        "doc": doc.splitlines()[0] if doc else "",
        "names": names,
        "names_from": names_from,
        "name_count": len(names),
        "warnings": caught,
        **source_facts(module, spec),
    }
