"""The example services under ``examples/`` run through a real engine on real
data that ships with Python (its standard library sources and license)."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import InputInvalid
from kos_see.home import Home
from kos_see.models import TaskRecord

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("stdlib-complexity", "license-words", "module-inspect")


@pytest.fixture
def examples_engine(tmp_path: Path) -> Iterator[Engine]:
    """A serving engine on a home in ``tmp_path`` with the examples registered."""
    home = Home(tmp_path / "home")
    home.init()
    engine = Engine.open(home)
    for name in NAMES:
        engine.registry.add(EXAMPLES / name)
    engine.serve()
    yield engine
    engine.close()


def run(engine: Engine, service: str, inputs: dict[str, Any]) -> TaskRecord:
    task = engine.dispatcher.submit(SubmitRequest(service, inputs)).task
    done = engine.wait(task.id, 90)
    assert done.terminal, f"{service} still {done.state} after 90s"
    return done


def describe(engine: Engine, task: TaskRecord) -> str:
    """The failure details worth seeing when an assertion about a task fails."""
    attempts = engine.store.attempts(task.id)
    stderr = attempts[-1].stderr if attempts else ""
    return f"{task.state}: {task.error}\n{stderr}"


def kinds(engine: Engine, task_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in engine.store.events(task_id, limit=10000):
        found.setdefault(event.kind, []).append(event.data)
    return found


def defined_at(path: Path, qualname: str, line: int) -> bool:
    """Whether ``path`` really defines a function named like ``qualname`` there."""
    leaf = qualname.rsplit(".", 1)[-1]
    tree = ast.parse(path.read_bytes())
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name == leaf
        and node.lineno == line
        for node in ast.walk(tree)
    )


def module_path(stdlib: Path, module: str) -> Path:
    base = stdlib.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_complexity_ranks_real_stdlib_functions(examples_engine: Engine) -> None:
    task = run(examples_engine, "stdlib-complexity", {"modules": 60, "top": 5})
    assert task.state == "succeeded", describe(examples_engine, task)
    result = task.result_value()
    top, stdlib = result["top"], Path(result["stdlib"])
    assert result["modules_scanned"] == 60 and len(top) == 5
    scores = [f["complexity"] for f in top]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 1
    for function in top:
        assert function["module"].split(".")[0] in sys.stdlib_module_names
        path = module_path(stdlib, function["module"])
        assert defined_at(path, function["function"], function["line"]), function
    progress = kinds(examples_engine, task.id)["progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 60


def test_complexity_prefix_keeps_to_one_package(examples_engine: Engine) -> None:
    task = run(examples_engine, "stdlib-complexity", {"prefix": "json", "top": 3})
    assert task.state == "succeeded", describe(examples_engine, task)
    modules = [m["module"] for m in task.result_value()["modules"]]
    assert "json" in modules and "json.decoder" in modules
    assert all(m == "json" or m.startswith("json.") for m in modules)


@pytest.mark.parametrize("inputs", [{"modules": 0}, {"top": 51}, {"bogus": 1}])
def test_complexity_schema_refuses_bad_input(
    examples_engine: Engine, inputs: dict[str, Any]
) -> None:
    with pytest.raises(InputInvalid):
        examples_engine.dispatcher.submit(SubmitRequest("stdlib-complexity", inputs))


def test_license_words_counts_the_real_license(examples_engine: Engine) -> None:
    task = run(examples_engine, "license-words", {"modules": 100})
    assert task.state == "succeeded", describe(examples_engine, task)
    result = task.result_value()
    text = Path(result["license_file"]).read_text(encoding="utf-8").lower()
    expected = re.findall(r"[a-z][a-z']*[a-z]", text).count("python")
    license_top = dict(result["license_top"])
    assert expected > 0 and license_top.get("python") == expected
    # The docstrings add to the license's count, never take from it.
    assert dict(result["top"]).get("python", expected) >= expected
    assert result["modules"] == 100 and result["words"] > sum(license_top.values())
    events = kinds(examples_engine, task.id)
    assert events.get("progress"), "no progress event was recorded"
    outputs = [e["data"] for e in events.get("output", [])]
    assert len(outputs) >= 2 and outputs[-1]["sources_done"] == 101


def test_module_inspect_describes_json(examples_engine: Engine) -> None:
    task = run(examples_engine, "module-inspect", {"module": "json"})
    assert task.state == "succeeded", describe(examples_engine, task)
    result = task.result_value()
    assert "dumps" in result["names"] and result["package"] is True
    assert result["doc"].startswith("JSON")
    assert result["source_bytes"] == Path(result["file"]).stat().st_size > 0


@pytest.mark.parametrize("module", ["no_such_mod", "jsonschema", "json.no_such_mod"])
def test_module_inspect_fails_clearly_outside_stdlib(
    examples_engine: Engine, module: str
) -> None:
    # jsonschema is importable here but is not the standard library.
    task = run(examples_engine, "module-inspect", {"module": module})
    assert task.state == "failed", describe(examples_engine, task)
    assert f"no module named {module!r}" in task.error
    assert len(examples_engine.store.attempts(task.id)) == 1  # retry_limit = 0
