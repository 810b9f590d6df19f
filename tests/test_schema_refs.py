"""An input schema is checked at registration; its references are never fetched."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.errors import InputInvalid, ManifestError
from kos_see.registry import Registry

SOURCE = "def run(inputs):\n    return inputs\n"


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the handler's fixed name)
        self.hits.append(self.path)
        body = b'{"type": "integer"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback serving a schema; it counts requests."""
    hits: list[str] = []
    handler = type("Handler", (_Counting,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/schema.json", hits
    server.shutdown()
    server.server_close()


def _schema_with(ref: str) -> dict:
    return {"type": "object", "properties": {"n": {"$ref": ref}}}


def test_a_remote_ref_is_refused_and_never_fetched(
    make_service, registry: Registry, schema_server
):
    url, hits = schema_server
    name = make_service(
        "remote", SOURCE, input_schema=_schema_with(url), register=False
    )
    with pytest.raises(ManifestError, match="never fetches") as caught:
        registry.add(make_service.folder(name))
    assert "/properties/n/$ref" in caught.value.message
    assert hits == []


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "other.json", "/abs.json"])
def test_file_and_relative_refs_are_refused(make_service, registry: Registry, ref):
    name = make_service(
        f"ref-{abs(hash(ref))}", SOURCE, input_schema=_schema_with(ref), register=False
    )
    with pytest.raises(ManifestError, match="reference to another document"):
        registry.add(make_service.folder(name))


def test_a_local_ref_that_names_nothing_is_refused(make_service, registry: Registry):
    name = make_service(
        "dangling", SOURCE, input_schema=_schema_with("#/$defs/nope"), register=False
    )
    with pytest.raises(ManifestError, match="names nothing"):
        registry.add(make_service.folder(name))


def test_a_schema_the_metaschema_refuses_is_refused(make_service, registry: Registry):
    schema = {"type": "object", "properties": {"n": {"minimum": "zero"}}}
    name = make_service("badmeta", SOURCE, input_schema=schema, register=False)
    with pytest.raises(ManifestError, match="not a valid JSON Schema"):
        registry.add(make_service.folder(name))


def test_a_local_ref_works_at_submit(idle_engine, make_service):
    schema = _schema_with("#/$defs/count") | {"$defs": {"count": {"type": "integer"}}}
    name = make_service("localref", SOURCE, input_schema=schema)
    idle_engine.dispatcher.submit(SubmitRequest(service=name, input={"n": 3}))
    with pytest.raises(InputInvalid, match="is not of type 'integer'"):
        idle_engine.dispatcher.submit(SubmitRequest(service=name, input={"n": "x"}))


def test_services_add_refuses_a_remote_ref_with_exit_3(
    tmp_path: Path, make_service, schema_server
):
    url, hits = schema_server
    name = make_service(
        "clirefs", SOURCE, input_schema=_schema_with(url), register=False
    )
    env = {**os.environ, "KOS_SEE_HOME": str(tmp_path / "clihome"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "kos_see.cli"]
    subprocess.run([*command, "init"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [*command, "services", "add", str(make_service.folder(name))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "never fetches" in done.stderr
    assert hits == []


def test_a_version_registered_before_the_check_is_refused_at_submit(
    idle_engine, make_service, registry: Registry, schema_server
):
    import dataclasses

    from kos_see.errors import RequestRefused

    url, hits = schema_server
    name = make_service("legacy", SOURCE)
    record, _manifest = registry.resolve(name)
    legacy = dataclasses.replace(
        record,
        version="0.9.0",
        manifest=record.manifest
        | {"version": "0.9.0", "input_schema": _schema_with(url)},
    )
    registry.store.add_service(legacy)
    with pytest.raises(RequestRefused, match="register a new version") as caught:
        idle_engine.dispatcher.submit(
            SubmitRequest(service=f"{name}@0.9.0", input={"n": 1})
        )
    assert "never fetches" in caught.value.message
    assert hits == []
