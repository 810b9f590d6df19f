"""Acceptance: ``kos-see serve`` with [api] enabled, and the task verbs with
``--server URL`` run as real subprocesses against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kos_see.home import Home
from kos_see.security.keys import generate, write_pair
from kos_see.security.principals import PrincipalStore
from kos_see.store import open_store

pytestmark = pytest.mark.acceptance

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]
SERVICE = """
name = "echo"
version = "1.0.0"
entrypoint = "main.py:run"
retry_limit = 0
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path: Path):
    home_dir = tmp_path / "home"
    port = _free_port()
    env = {
        **os.environ,
        "KOS_SEE_HOME": str(home_dir),
        "KOS_SEE_API__ENABLED": "true",
        "KOS_SEE_API__PORT": str(port),
        "KOS_SEE_API__GRPC_PORT": str(_free_port()),
        "KOS_SEE_EXECUTION__SHUTDOWN_GRACE": "0.5",
        "COLUMNS": "200",
    }
    subprocess.run([*KOS_SEE, "init"], env=env, check=True, capture_output=True)
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "service.toml").write_text(SERVICE)
    (folder / "main.py").write_text("def run(inputs):\n    return inputs\n")
    subprocess.run(
        [*KOS_SEE, "services", "add", str(folder)],
        env=env,
        check=True,
        capture_output=True,
    )
    key = generate()
    key_path = tmp_path / "keys" / "bob.key"
    write_pair(key, key_path)
    home = Home(home_dir)
    store = open_store(home.store_url(home.load_config()))
    PrincipalStore(store).add("bob", "team", "submitter", key.public)
    store.close()
    # init wrote the default policy (operators only): let bob's role work.
    with (home_dir / "policy.csv").open("a") as policy:
        policy.write(
            "p, submitter, team, submit, service:*, allow\n"
            "p, submitter, team, submit, class:*, allow\n"
            "p, submitter, team, read, service:*, allow\n"
            "p, submitter, team, cancel, service:*, allow\n"
        )

    server = subprocess.Popen(
        [*KOS_SEE, "serve", "--slots", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, server.stderr.read()
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not start within 60 s"
        time.sleep(0.1)
    client_env = {
        **os.environ,
        "KOS_SEE_HOME": str(tmp_path / "elsewhere"),  # no local home is used
        "KOS_SEE_SERVER": url,
        "KOS_SEE_PRINCIPAL": "bob",
        "KOS_SEE_KEY": str(key_path),
        "COLUMNS": "200",
    }
    yield client_env
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)


def _run(env, *args, expect=0):
    done = subprocess.run(
        [*KOS_SEE, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    return done


def test_task_verbs_work_against_a_remote_engine(served):
    env = served
    task = json.loads(
        _run(env, "submit", "echo", "--input", '{"n": 5}', "--wait", "--json").stdout
    )
    assert task["state"] == "succeeded" and task["result"] == {"n": 5}
    assert task["tenant"] == "team" and task["principal"] == "bob"

    listed = json.loads(_run(env, "list", "--json").stdout)
    assert [t["id"] for t in listed] == [task["id"]]
    status = json.loads(_run(env, "status", task["id"], "--json").stdout)
    assert status["state"] == "succeeded"
    assert json.loads(_run(env, "result", task["id"], "--json").stdout)["result"] == {
        "n": 5
    }
    lines = _run(env, "watch", task["id"], "--json").stdout.splitlines()
    assert json.loads(lines[-1])["kind"] == "end"
    assert "succeeded" in _run(env, "list").stdout

    # Refusals keep their exit code: 3 for an unknown service or task.
    missing = _run(env, "submit", "nope", "--json", expect=3)
    assert json.loads(missing.stdout)["error"] == "unknown_service"
    _run(env, "status", "0" * 24, expect=3)


def test_an_unsigned_remote_request_is_refused(served):
    env = {k: v for k, v in served.items() if k != "KOS_SEE_KEY"}
    done = _run(env, "submit", "echo", "--json", expect=3)
    assert json.loads(done.stdout)["error"] == "unsigned_request"


def test_kos_see_api_serves_alone_and_stops_on_sigterm(tmp_path: Path):
    env = {**os.environ, "KOS_SEE_HOME": str(tmp_path / "home")}
    subprocess.run([*KOS_SEE, "init"], env=env, check=True, capture_output=True)
    port, grpc_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [*KOS_SEE, "api", "--port", str(port), "--grpc-port", str(grpc_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz")
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.1)
        assert answer.json()["status"] == "ok"
        unsigned = httpx.get(f"http://127.0.0.1:{port}/v1/services")
        assert unsigned.status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"gRPC 127.0.0.1:{grpc_port}" in err
