"""Dependencies fetched before each attempt, out/ files into the vault, and
the signed provenance record, through a real engine on a real home.

Vectors here are embedded by the endpoint embedder against a real HTTP
server on loopback (``depfixtures.embedding_server``); prompts come from a
real library folder; artifacts from a real vault folder.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import textwrap
import threading
from pathlib import Path, PurePosixPath

import pytest
from depfixtures import embedding_server, verify_with_securesystemslib
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.exceptions import VerificationError

from kos_see.audit.verify import entries
from kos_see.dependencies.declared import RESERVED, checked_path
from kos_see.dependencies.embed import EndpointEmbedder
from kos_see.dependencies.prompts import PromptLibrary
from kos_see.dependencies.vault import Vault, sha256_digest
from kos_see.dependencies.vectors import Item, VectorStore
from kos_see.dispatcher import SubmitRequest
from kos_see.errors import (
    ArtifactNotFound,
    CollectionError,
    DependencyFailed,
    ManifestError,
    VaultError,
)
from kos_see.provenance.replay import changes_since, compare, latest_statement
from kos_see.provenance.wiring import make_provisioner
from kos_see.registry.manifest import load_manifest
from kos_see.states import TaskState

SERVICE_SOURCE = """
    import json, os
    from kos_see import service

    data = service.inputs()
    prompt = open("prompts/answer.txt").read()
    words = open("data/words.txt").read().split()
    matches = json.load(open("vectors/near.json"))
    os.makedirs("out", exist_ok=True)
    with open("out/answer.txt", "w") as f:
        f.write(prompt.upper())
    with open("out/count.json", "w") as f:
        json.dump({"words": len(words), "best": matches[0]["key"]}, f)
    service.result({"best": matches[0]["key"], "words": len(words)})
"""

TEMPLATE = (
    "Question: {{ question }}\n"
    "{% for m in vectors.near %}- {{ m.key }}: {{ m.text }}\n{% endfor %}"
)


def _manifest(digest: str) -> str:
    return textwrap.dedent(
        f"""
        name = "deps"
        version = "1.0.0"
        entrypoint = "main.py"
        retry_limit = 0

        [[dependencies.vectors]]
        name = "near"
        collection = "fruit"
        query_from = "question"
        top_k = 2

        [[dependencies.prompts]]
        name = "answer"
        version = "1"

        [[dependencies.artifacts]]
        digest = "{digest}"
        path = "data/words.txt"
        """
    )


def run(engine, service, input=None, timeout=60.0):
    request = SubmitRequest(service=service, input={} if input is None else input)
    task = engine.dispatcher.submit(request).task
    done = engine.wait(task.id, timeout=timeout)
    assert done.terminal, f"task {task.id} still {done.state} after {timeout}s"
    return done


@pytest.fixture
def endpoint():
    with embedding_server() as url:
        yield url


@pytest.fixture
def filled(home, endpoint):
    """A prompt library, a vault artifact and a vector collection in ``home``."""
    library = home.root / "prompts" / "answer"
    library.mkdir(parents=True)
    (library / "1.j2").write_text(TEMPLATE)
    vault = Vault(str(home.root / "vault"))
    words = vault.put_bytes(b"apple banana cherry date")
    store = VectorStore(home.root / "vectors.db", EndpointEmbedder(endpoint))
    store.add(
        "fruit",
        [
            Item("apple", "apple apple apple", {"colour": "red"}),
            Item("kiwi", "kiwi kiwi", {"colour": "green"}),
            Item("banana", "banana banana", {}),
        ],
    )
    return words.digest


@pytest.fixture
def deps_engine(make_engine, endpoint):
    return make_engine(
        dependencies={"embedder": "endpoint", "embed_endpoint": endpoint}
    )


def test_a_declared_path_that_escapes_the_working_directory_is_refused(tmp_path):
    for bad in ("../escape.txt", "/etc/passwd", "input.json", "out/x"):
        folder = tmp_path / bad.replace("/", "_")
        folder.mkdir()
        (folder / "main.py").write_text("")
        (folder / "service.toml").write_text(
            'name = "x"\nversion = "1"\nentrypoint = "main.py"\n'
            f'[[dependencies.artifacts]]\ndigest = "sha256:{"0" * 64}"\n'
            f"path = {json.dumps(bad)}\n"
        )
        with pytest.raises(ManifestError, match="dependencies.artifacts.0.path"):
            load_manifest(folder)


def test_an_artifact_needs_a_digest_or_a_url(tmp_path):
    (tmp_path / "main.py").write_text("")
    (tmp_path / "service.toml").write_text(
        'name = "x"\nversion = "1"\nentrypoint = "main.py"\n'
        '[[dependencies.artifacts]]\npath = "a.txt"\n'
    )
    with pytest.raises(ManifestError, match="needs a digest, a url, or both"):
        load_manifest(tmp_path)


def test_the_vault_checks_digests_and_refuses_a_tampered_object(tmp_path):
    vault = Vault(str(tmp_path / "vault"))
    stored = vault.put_bytes(b"hello")
    assert stored.digest == sha256_digest(b"hello")
    assert vault.get_bytes(stored.digest) == b"hello"
    assert [a.digest for a in vault.list()] == [stored.digest]
    # The same content is stored once.
    assert vault.put_bytes(b"hello") == stored
    path = tmp_path / "vault" / "sha256" / stored.digest[7:9] / stored.digest[7:]
    path.write_bytes(b"HELLO")
    with pytest.raises(VaultError, match="does not match its digest"):
        vault.get_bytes(stored.digest)
    with pytest.raises(ArtifactNotFound, match="no artifact sha256:"):
        vault.get_bytes("sha256:" + "1" * 64)
    with pytest.raises(VaultError, match="larger than the cap of 2 bytes"):
        vault.get_bytes(vault.put_bytes(b"abc").digest, max_bytes=2)


def test_the_vault_works_on_another_fsspec_filesystem():
    vault = Vault("memory://kos-see-test-vault")
    stored = vault.put_bytes(b"in memory")
    assert vault.get_bytes(stored.digest) == b"in memory"


def test_prompts_refuse_missing_variables_and_python_internals(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "1.j2").write_text("Hi {{ name }}")
    (tmp_path / "p" / "2.j2").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    )
    library = PromptLibrary(tmp_path)
    assert library.render("p", "1", {"name": "Ada"}).text == "Hi Ada"
    with pytest.raises(DependencyFailed, match="'name' is undefined"):
        library.render("p", "1", {})
    with pytest.raises(DependencyFailed, match="sandbox forbids"):
        library.render("p", "2", {})
    with pytest.raises(DependencyFailed, match="prompt p@3 not found"):
        library.render("p", "3", {})


def test_a_collection_refuses_a_query_from_another_embedder(tmp_path, endpoint):
    store = VectorStore(tmp_path / "v.db", EndpointEmbedder(endpoint))
    store.add("c", [Item("a", "aaa", {})])
    other = VectorStore(tmp_path / "v.db", EndpointEmbedder(endpoint + "?other"))
    with pytest.raises(CollectionError, match="filled by embedder"):
        other.query("c", "aaa", 1)
    with pytest.raises(CollectionError, match="no vector collection 'nope'"):
        store.query("nope", "aaa", 1)
    with pytest.raises(CollectionError, match="not a collection name"):
        store.query("Bad-Name; drop", "aaa", 1)


def test_an_attempt_gets_its_dependencies_and_leaves_verified_provenance(
    home, filled, deps_engine, make_service, caplog
):
    make_service("deps", SERVICE_SOURCE, manifest_text=_manifest(filled))
    with caplog.at_level(logging.INFO, logger="kos_see.provenance.recorder"):
        task = run(deps_engine, "deps", {"question": "apple pie"})
    assert task.state == TaskState.SUCCEEDED, task.error
    assert json.loads(task.result) == {"best": "apple", "words": 4}

    # Each dependency's digest and fetch time is on the attempt.
    attempt = deps_engine.store.attempts(task.id)[-1]
    fetched = {d["name"]: d for d in json.loads(attempt.dependencies)}
    assert set(fetched) == {
        "vectors:near",
        "prompt:answer@1",
        "artifact:data/words.txt",
    }
    assert fetched["artifact:data/words.txt"]["digest"] == filled
    assert all(d["fetch_seconds"] >= 0 for d in fetched.values())
    # ... and in one structured log line each.
    logged = [
        r for r in caplog.records if getattr(r, "action", None) == "dependency_fetched"
    ]
    assert {r.dependency for r in logged} == set(fetched)
    assert all(r.task_id == task.id and r.fetch_seconds >= 0 for r in logged)

    # out/ files are in the vault, their digests on the task.
    outputs = json.loads(task.outputs)
    assert set(outputs) == {"out/answer.txt", "out/count.json"}
    vault = Vault(str(home.root / "vault"))
    answer = vault.get_bytes(outputs["out/answer.txt"]["digest"])
    assert answer.startswith(b"QUESTION: APPLE PIE\n- APPLE: ")

    # The record verifies with securesystemslib against the engine's key.
    record = deps_engine.store.provenance_records(task.id)[-1]
    payload = verify_with_securesystemslib(json.loads(record["envelope"]), home)
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    # The attempt's end in the audit log carries the statement's digest.
    assert record["statement_digest"] == sha256_digest(payload)
    deps_engine.audit.flush()
    [end] = [e for e in entries(deps_engine.store, task.id) if e.kind == "attempt_end"]
    assert end.body_value()["provenance_digest"] == record["statement_digest"]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {
        s["name"]: "sha256:" + s["digest"]["sha256"] for s in statement["subject"]
    }
    assert subjects["out/answer.txt"] == outputs["out/answer.txt"]["digest"]
    assert subjects["result.json"] == sha256_digest(task.result.encode())
    build = statement["predicate"]["buildDefinition"]
    resolved = {
        d["name"]: "sha256:" + d["digest"]["sha256"]
        for d in build["resolvedDependencies"]
    }
    assert resolved["service:deps@1.0.0"] == task.digest
    assert resolved["artifact:data/words.txt"] == filled
    assert (
        build["externalParameters"]["input"]["digest"]["sha256"]
        == task.input_digest[7:]
    )
    details = statement["predicate"]["runDetails"]
    assert details["metadata"]["invocationId"] == f"{task.id}/1"
    assert details["builder"]["version"]["python"]

    # An altered record no longer verifies.
    envelope = json.loads(record["envelope"])
    envelope["payload"] = envelope["payload"][:-4] + "AAA="
    with pytest.raises(VerificationError):
        verify_with_securesystemslib(envelope, home)


def test_replay_is_identical_and_refused_once_a_dependency_changed(
    home, filled, deps_engine, make_service
):
    make_service("deps", SERVICE_SOURCE, manifest_text=_manifest(filled))
    question = {"question": "a banana?"}
    first = run(deps_engine, "deps", question)
    assert first.state == TaskState.SUCCEEDED, first.error
    recorded = latest_statement(deps_engine.store, first.id)
    provisioner = make_provisioner(home, deps_engine.config)
    assert changes_since(recorded, first, deps_engine.registry, provisioner) == []

    again = run(deps_engine, "deps", question)
    assert compare(recorded, latest_statement(deps_engine.store, again.id)).identical

    (home.root / "prompts" / "answer" / "1.j2").write_text(TEMPLATE + "changed\n")
    changes = changes_since(recorded, first, deps_engine.registry, provisioner)
    assert len(changes) == 1 and changes[0].startswith("prompt:answer@1: digest was")
    changed = run(deps_engine, "deps", question)
    comparison = compare(recorded, latest_statement(deps_engine.store, changed.id))
    assert not comparison.identical
    assert {d["name"] for d in comparison.differ} == {"out/answer.txt"}

    # Edited code under the same version cannot be replayed either.
    main = make_service.folder("deps") / "main.py"
    main.write_text(main.read_text() + "\n# edited\n")
    changes = changes_since(recorded, first, deps_engine.registry, provisioner)
    assert len(changes) == 1
    assert changes[0].startswith("service deps@1.0.0: ") and "changed" in changes[0]


def test_a_failed_fetch_fails_the_attempt_with_a_retryable_error(
    home, filled, deps_engine, make_service
):
    manifest = _manifest(filled).replace("retry_limit = 0", "retry_limit = 1")
    make_service("deps", SERVICE_SOURCE, manifest_text=manifest)
    (home.root / "prompts" / "answer" / "1.j2").unlink()
    task = run(deps_engine, "deps", {"question": "apple"})
    assert task.state == TaskState.DEAD
    assert task.error_kind == "dependency"
    assert "prompt:answer@1: prompt answer@1 not found" in task.error
    # Retryable: both attempts of 1 + retry_limit were made.
    assert [a.outcome for a in deps_engine.store.attempts(task.id)] == ["failed"] * 2
    # Each attempt still has its record: it ran nothing and made nothing.
    records = deps_engine.store.provenance_records(task.id)
    assert [r["attempt"] for r in records] == [1, 2]
    statement = json.loads(
        verify_with_securesystemslib(json.loads(records[0]["envelope"]), home)
    )
    assert statement["subject"] == []
    byproducts = statement["predicate"]["runDetails"]["byproducts"]
    assert byproducts == [{"name": "outcome", "annotations": {"outcome": "failed"}}]


def test_a_missing_input_field_for_a_vector_query_is_named(
    home, filled, deps_engine, make_service
):
    make_service("deps", SERVICE_SOURCE, manifest_text=_manifest(filled))
    task = run(deps_engine, "deps", {"other": 1})
    assert task.state == TaskState.FAILED
    assert "vectors:near: the task's input has no field 'question'" in task.error


def test_an_artifact_url_needs_an_allowed_scheme(
    home, tmp_path, endpoint, make_engine, make_service
):
    source = tmp_path / "remote.txt"
    source.write_bytes(b"one two")
    manifest = textwrap.dedent(
        f"""
        name = "url"
        version = "1.0.0"
        entrypoint = "main.py"
        retry_limit = 0
        [[dependencies.artifacts]]
        url = "{source.as_uri()}"
        path = "remote.txt"
        """
    )
    make_service(
        "url",
        "from kos_see import service\nservice.result(open('remote.txt').read())\n",
        manifest_text=manifest,
    )
    engine = make_engine(dependencies={"url_schemes": ["file"]})
    task = run(engine, "url")
    assert task.state == TaskState.SUCCEEDED, task.error
    assert json.loads(task.result) == "one two"
    # Kept in the vault by digest, so a replay can name it.
    assert Vault(str(home.root / "vault")).has(sha256_digest(b"one two"))


def test_an_artifact_url_with_a_scheme_not_allowed_is_refused(
    tmp_path, make_engine, make_service
):
    manifest = textwrap.dedent(
        f"""
        name = "url"
        version = "1.0.0"
        entrypoint = "main.py"
        retry_limit = 0
        [[dependencies.artifacts]]
        url = "{(tmp_path / "x").as_uri()}"
        path = "x"
        """
    )
    make_service("url", "", manifest_text=manifest)
    engine = make_engine()
    task = run(engine, "url")
    assert task.state == TaskState.FAILED
    assert "dependencies.url_schemes does not allow" in task.error


def test_a_symlink_under_out_is_not_followed(home, make_engine, make_service):
    secret = home.root / "secret.txt"
    secret.write_text("engine's own file")
    make_service(
        "links",
        f"""
        import os
        os.makedirs("out")
        os.symlink({str(secret)!r}, "out/leak.txt")
        open("out/real.txt", "w").write("mine")
        """,
    )
    engine = make_engine()
    task = run(engine, "links")
    assert task.state == TaskState.SUCCEEDED, task.error
    assert set(json.loads(task.outputs)) == {"out/real.txt"}
    assert engine.store.provenance_records(task.id)


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on loopback serving ``tmp_path / "served"``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietFiles, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _url_service(make_service, url, digest=None, max_bytes=None, version="1.0.0"):
    lines = [
        'name = "http"',
        f'version = "{version}"',
        'entrypoint = "main.py"',
        "retry_limit = 0",
        "[[dependencies.artifacts]]",
        f'url = "{url}"',
        'path = "data/page.txt"',
    ]
    if digest:
        lines.append(f'digest = "{digest}"')
    if max_bytes:
        lines.append(f"max_bytes = {max_bytes}")
    make_service(
        "http",
        "from kos_see import service\nservice.result(open('data/page.txt').read())\n",
        manifest_text="\n".join(lines) + "\n",
        version=version,
    )


def test_an_artifact_is_fetched_over_http_with_its_digest_checked(
    home, file_server, make_engine, make_service
):
    served, base = file_server
    (served / "page.txt").write_text("served over http")
    digest = sha256_digest(b"served over http")
    _url_service(make_service, f"{base}/page.txt", digest=digest)
    engine = make_engine(dependencies={"url_schemes": ["http"]})
    task = run(engine, "http")
    assert task.state == TaskState.SUCCEEDED, task.error
    assert json.loads(task.result) == "served over http"
    fetched = json.loads(engine.store.attempts(task.id)[-1].dependencies)
    assert fetched[0]["digest"] == digest
    assert fetched[0]["source"] == f"{base}/page.txt"

    # The same URL now serves other bytes: the declared digest refuses them.
    (served / "page.txt").write_text("swapped")
    task = run(engine, "http")
    assert task.state == TaskState.FAILED
    assert task.error_kind == "dependency"
    assert f"not the declared {digest}" in task.error


def test_an_http_artifact_that_is_missing_or_too_large_fails_clearly(
    home, file_server, make_engine, make_service
):
    served, base = file_server
    (served / "big.txt").write_text("x" * 100)
    _url_service(make_service, f"{base}/missing.txt")
    engine = make_engine(dependencies={"url_schemes": ["http"]})
    task = run(engine, "http")
    assert task.state == TaskState.FAILED and task.error_kind == "dependency"
    assert f"cannot read artifact URL '{base}/missing.txt'" in task.error
    _url_service(make_service, f"{base}/big.txt", max_bytes=10, version="2.0.0")
    task = run(engine, "http@2.0.0")
    assert task.state == TaskState.FAILED
    assert "is larger than 10 bytes" in task.error


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["..", ".", "", "a", "b.txt", "/", "~", "\\", "out", "tmp"]),
        min_size=1,
        max_size=6,
    )
)
def test_a_declared_path_is_refused_or_stays_inside_the_working_directory(parts):
    value = "/".join(parts)
    workdir = Path("/work/attempt")
    try:
        checked = checked_path(value)
    except ValueError:
        return
    target = (workdir / checked).resolve()
    assert target.is_relative_to(workdir) and target != workdir
    assert PurePosixPath(checked).parts[0] not in RESERVED
