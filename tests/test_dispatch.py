"""Intake (the dispatcher) and the registry: what is refused, and how."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import (
    InputInvalid,
    ManifestError,
    RequestRefused,
    ServiceChanged,
    ServiceNotFound,
)
from kos_see.registry import Registry

SCHEMA = {
    "type": "object",
    "required": ["text", "count"],
    "properties": {
        "text": {"type": "string"},
        "count": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
SOURCE = """
    def run(inputs):
        return inputs
"""


@pytest.fixture
def svc(make_service) -> str:
    return make_service("typed", SOURCE, entrypoint="main.py:run", input_schema=SCHEMA)


def submit(engine: Engine, service: str, input, **fields):
    return engine.dispatcher.submit(
        SubmitRequest(service=service, input=input, **fields)
    )


def test_a_valid_request_is_queued(idle_engine: Engine, svc: str) -> None:
    submitted = submit(idle_engine, svc, {"text": "hi", "count": 2})
    assert submitted.created
    assert submitted.task.state == "queued"
    assert submitted.task.version == "1.0.0"


@pytest.mark.parametrize(
    "value",
    [
        {"text": {1, 2}, "count": 1},  # a set
        {"text": b"bytes", "count": 1},
        {"text": "x", "count": float("nan")},
        {"text": "x", "count": object()},
    ],
    ids=["set", "bytes", "nan", "object"],
)
def test_input_that_is_not_json_is_refused(
    idle_engine: Engine, svc: str, value: object
) -> None:
    with pytest.raises(InputInvalid) as caught:
        submit(idle_engine, svc, value)
    assert "not JSON-serialisable" in caught.value.message
    assert [v["path"] for v in caught.value.violations] == ["$"]
    assert idle_engine.store.state_counts() == {}


def test_every_schema_violation_is_reported_with_its_path(
    idle_engine: Engine, svc: str
) -> None:
    with pytest.raises(InputInvalid) as caught:
        submit(idle_engine, svc, {"text": 5, "count": 0})
    paths = sorted(v["path"] for v in caught.value.violations)
    assert paths == ["$.count", "$.text"]
    assert "$.text" in caught.value.message and "$.count" in caught.value.message
    assert idle_engine.store.state_counts() == {}


def test_nested_and_missing_violations_name_their_paths(
    idle_engine: Engine, svc: str
) -> None:
    with pytest.raises(InputInvalid) as caught:
        submit(idle_engine, svc, {"count": 1, "tags": ["ok", 7], "extra": True})
    by_path = {}
    for violation in caught.value.violations:
        by_path.setdefault(violation["path"], []).append(violation["message"])
    assert set(by_path) == {"$", "$.tags[1]"}
    root = " ".join(by_path["$"])
    assert "'text' is a required property" in root
    assert "extra" in root  # additionalProperties
    assert caught.value.to_dict()["error"] == "invalid_input"


def test_unknown_service_is_refused(idle_engine: Engine, svc: str) -> None:
    with pytest.raises(ServiceNotFound) as caught:
        submit(idle_engine, "no-such-service", {})
    assert "no-such-service" in caught.value.message


def test_unknown_version_is_refused_naming_the_registered_ones(
    idle_engine: Engine, svc: str
) -> None:
    with pytest.raises(ServiceNotFound) as caught:
        submit(idle_engine, f"{svc}@9.9.9", {"text": "a", "count": 1})
    assert "9.9.9" in caught.value.message
    assert "1.0.0" in caught.value.message


def test_a_named_version_is_used(idle_engine: Engine, make_service) -> None:
    make_service("multi", SOURCE, entrypoint="main.py:run", version="1.0.0")
    make_service(
        "multi",
        textwrap.dedent(SOURCE) + "# v2\n",
        entrypoint="main.py:run",
        version="2.0.0",
    )
    assert submit(idle_engine, "multi@1.0.0", {}).task.version == "1.0.0"
    assert submit(idle_engine, "multi", {}).task.version == "2.0.0"


@pytest.mark.parametrize("priority", [101, -101, 10**9, True])
def test_priority_out_of_range_is_refused(
    idle_engine: Engine, svc: str, priority: int
) -> None:
    with pytest.raises(RequestRefused) as caught:
        submit(idle_engine, svc, {"text": "a", "count": 1}, priority=priority)
    assert "priority" in caught.value.message
    assert idle_engine.store.state_counts() == {}


@pytest.mark.parametrize("priority", [-100, 0, 100])
def test_priority_at_the_bounds_is_accepted(
    idle_engine: Engine, svc: str, priority: int
) -> None:
    task = submit(idle_engine, svc, {"text": "a", "count": 1}, priority=priority).task
    assert task.priority == priority


# registry


def test_bad_toml_manifest_is_refused(make_service, registry: Registry) -> None:
    folder = make_service.write(
        "broken", SOURCE, manifest_text='name = "broken\nversion = 1\n'
    )
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "not valid TOML" in caught.value.message
    assert "service.toml" in caught.value.message
    assert registry.list() == []


def test_missing_entrypoint_is_refused(make_service, registry: Registry) -> None:
    folder = make_service.write("noentry", SOURCE, entrypoint="missing.py")
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "'missing.py' does not exist" in caught.value.message
    assert registry.list() == []


def test_entrypoint_outside_the_folder_is_refused(
    make_service, registry: Registry
) -> None:
    folder = make_service.write("escape", SOURCE, entrypoint="../escape.py")
    (folder.parent / "escape.py").write_text("print('x')\n")
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "outside the service folder" in caught.value.message


def test_unknown_runner_is_refused(make_service, registry: Registry) -> None:
    folder = make_service.write("runner", SOURCE, runner="teleport")
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "unknown runner 'teleport'" in caught.value.message
    assert "local_python" in caught.value.message


def test_missing_and_unknown_keys_are_named(make_service, registry: Registry) -> None:
    folder = make_service.write(
        "keys", SOURCE, manifest_text='name = "keys"\nentrypoint = "main.py"\nx = 1\n'
    )
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "missing key 'version'" in caught.value.message
    assert "unknown key 'x'" in caught.value.message


def test_invalid_input_schema_is_refused(make_service, registry: Registry) -> None:
    folder = make_service.write("schema", SOURCE, input_schema={"type": "no-such-type"})
    with pytest.raises(ManifestError) as caught:
        registry.add(folder)
    assert "input_schema" in caught.value.message


def test_editing_code_without_a_new_version_is_refused(
    make_service, registry: Registry
) -> None:
    name = make_service("edited", SOURCE, entrypoint="main.py:run")
    record, _manifest = registry.resolve(name)  # verified, and cached
    main = make_service.folder(name) / "main.py"
    main.write_text(main.read_text() + "\nimport os  # edited\n")
    with pytest.raises(ServiceChanged) as caught:
        registry.resolve(name)
    assert "changed since it was registered" in caught.value.message
    with pytest.raises(ServiceChanged):
        registry.resolve(f"{name}@{record.version}")


def test_adding_a_new_file_is_an_edit_too(make_service, registry: Registry) -> None:
    name = make_service("grown", SOURCE, entrypoint="main.py:run")
    registry.resolve(name)
    (make_service.folder(name) / "helper.py").write_text("X = 1\n")
    with pytest.raises(ServiceChanged):
        registry.resolve(name)


def test_an_edit_that_keeps_size_and_mtime_is_still_detected(
    make_service, registry: Registry
) -> None:
    name = make_service(
        "sneaky", SOURCE.replace("inputs", "values"), entrypoint="main.py:run"
    )
    registry.resolve(name)
    main = make_service.folder(name) / "main.py"
    before = main.stat()
    edited = main.read_text().replace("return values", "return 'pwnd'")
    assert len(edited.encode()) == before.st_size
    main.write_text(edited)
    os.utime(main, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ServiceChanged):
        registry.resolve(name)


def test_the_same_version_with_other_content_is_refused(
    make_service, registry: Registry, tmp_path: Path
) -> None:
    name = make_service("pinned", SOURCE, entrypoint="main.py:run")
    first = registry.resolve(name)[0]
    # the same content again is accepted as already registered
    again, created = registry.add(make_service.folder(name))
    assert (again.digest, created) == (first.digest, False)

    other = tmp_path / "pinned-copy"
    shutil.copytree(make_service.folder(name), other)
    (other / "main.py").write_text("def run(inputs):\n    return 'other'\n")
    with pytest.raises(ServiceChanged) as caught:
        registry.add(other)
    assert "already registered" in caught.value.message
    records = [r for r in registry.list() if r.name == name]
    assert [(r.version, r.digest) for r in records] == [("1.0.0", first.digest)]


def test_the_scheduled_class_is_only_for_tasks_that_schedules_make(
    idle_engine: Engine, svc: str
) -> None:
    with pytest.raises(RequestRefused) as caught:
        submit(idle_engine, svc, {"text": "a", "count": 1}, queue_class="scheduled")
    assert "schedules add" in caught.value.message
    assert idle_engine.store.state_counts() == {}


@pytest.mark.parametrize(
    "sections",
    [
        {"quotas": {"tenants": {"acme": {"max_running": True}}}},
        {"quotas": {"services": {"svc": True}}},
        {"queue": {"aging": 0}},
    ],
    ids=["max_running-bool", "service-limit-bool", "aging-zero"],
)
def test_config_refuses_booleans_for_counts_and_a_zero_aging(sections) -> None:
    from kos_see.config import validate_config
    from kos_see.errors import ConfigError

    with pytest.raises(ConfigError):
        validate_config(sections)
