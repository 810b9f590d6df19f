"""Acceptance: ``kos-see artifacts``, ``vectors``, ``provenance`` and ``replay``
through the real CLI as subprocesses, with a serving engine in the background.

Vectors are embedded by the endpoint embedder against a real HTTP server on
loopback in this test process (``depfixtures.embedding_server``).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest
from depfixtures import embedding_server, verify_with_securesystemslib
from test_cli_acceptance import Cli, cli  # noqa: F401, F811 (the fixture)

from kos_see.home import Home

pytestmark = pytest.mark.acceptance

SOURCE = """
    import json, os
    from kos_see import service

    prompt = open("prompts/greet.txt").read()
    near = json.load(open("vectors/near.json"))
    os.makedirs("out", exist_ok=True)
    with open("out/greeting.txt", "w") as f:
        f.write(prompt + open("names.txt").read() + near[0]["key"])
    service.result({"ok": True})
"""


def _service(folder, digest):
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(textwrap.dedent(SOURCE))
    (folder / "service.toml").write_text(
        textwrap.dedent(
            f"""
            name = "greet"
            version = "1.0.0"
            entrypoint = "main.py"
            retry_limit = 0
            [[dependencies.vectors]]
            name = "near"
            collection = "words"
            query_from = "name"
            top_k = 1
            [[dependencies.prompts]]
            name = "greet"
            version = "1"
            [[dependencies.artifacts]]
            digest = "{digest}"
            path = "names.txt"
            """
        )
    )
    return folder


def test_artifacts_vectors_provenance_and_replay_through_the_cli(
    cli: Cli,  # noqa: F811 (the fixture, imported)
    tmp_path,
):
    with embedding_server() as url:
        cli.env["KOS_SEE_DEPENDENCIES__EMBEDDER"] = "endpoint"
        cli.env["KOS_SEE_DEPENDENCIES__EMBED_ENDPOINT"] = url
        names = tmp_path / "names.txt"
        names.write_text("Ada, Grace\n")
        [put] = cli.json("artifacts", "put", str(names))
        assert put["size"] == 11 and put["digest"].startswith("sha256:")
        listed = cli.json("artifacts", "list")
        assert [a["digest"] for a in listed] == [put["digest"]]
        got = cli.run("artifacts", "get", put["digest"])
        assert got.returncode == 0 and got.stdout == "Ada, Grace\n"
        missing = cli.run("artifacts", "get", "sha256:" + "0" * 64)
        assert missing.returncode == 3 and "no artifact sha256:000" in missing.stderr

        items = tmp_path / "items.jsonl"
        items.write_text(
            '{"key": "zebra", "text": "zzz zebra"}\n{"key": "apple", "text": "apple"}\n'
        )
        assert cli.json("vectors", "add", "words", "--file", str(items))["added"] == 2
        found = cli.json("vectors", "query", "words", "apples", "-k", "1")
        assert [m["key"] for m in found] == ["apple"]
        bad = cli.run("vectors", "add", "words", "--file", str(names))
        assert bad.returncode == 2 and "line 1 is not JSON" in bad.stderr

        prompts = cli.home / "prompts" / "greet"
        prompts.mkdir(parents=True)
        (prompts / "1.j2").write_text("Hello {{ name }}: ")
        folder = _service(tmp_path / "greet", put["digest"])
        assert cli.run("services", "add", str(folder)).returncode == 0
        server = cli.serve()
        task = cli.json("submit", "greet", "-i", '{"name": "apple"}', "--wait")
        assert task["state"] == "succeeded", task
        stored = task["outputs"]["out/greeting.txt"]
        got = cli.run("artifacts", "get", stored["digest"])
        assert got.stdout == "Hello apple: Ada, Grace\napple"

        shown = cli.json("provenance", task["id"])
        verify_with_securesystemslib(shown["envelope"], Home(cli.home))
        subjects = {s["name"] for s in shown["statement"]["subject"]}
        assert subjects == {"out/greeting.txt", "result.json"}
        printed = cli.run("provenance", task["id"], "--statement")
        assert json.loads(printed.stdout)["_type"] == "https://in-toto.io/Statement/v1"

        same = cli.json("replay", task["id"])
        assert same["identical"] is True and same["differ"] == []
        assert same["replay_id"] != task["id"]

        (prompts / "1.j2").write_text("Goodbye {{ name }}: ")
        refused = cli.run("replay", task["id"])
        assert refused.returncode == 3
        assert "prompt:greet@1: digest was sha256:" in refused.stderr
        cli.stop(server)

    # A record altered in the store no longer verifies, and the CLI says so.
    envelope = shown["envelope"]
    envelope["payload"] = envelope["payload"][:-8] + "AAAAAAA="
    with sqlite3.connect(Home(cli.home).database_path) as db:
        db.execute(
            "update provenance set envelope = ? where task_id = ?",
            (json.dumps(envelope), task["id"]),
        )
    altered = cli.run("provenance", task["id"])
    assert altered.returncode == 1
    assert "does not verify against the engine's key" in altered.stderr
