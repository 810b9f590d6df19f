"""Acceptance tests: the real ``kos-see`` command, as subprocesses, on a real home.

Each test drives the CLI the way a user would: init, register, serve in the
background, submit, watch, read results, stop the engine with a signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]


class Cli:
    """Runs ``kos-see`` on one home, with short engine timings from the environment."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "KOS_SEE_HOME": str(home),
            "KOS_SEE_EXECUTION__SHUTDOWN_GRACE": "0.5",
            "KOS_SEE_EXECUTION__KILL_GRACE": "0.5",
            "KOS_SEE_EXECUTION__HEARTBEAT_SECONDS": "0.5",
            "KOS_SEE_EXECUTION__LEASE_SECONDS": "3",
            "KOS_SEE_QUEUE__RETRY_BASE": "0.01",
            "COLUMNS": "200",
        }
        self.servers: list[subprocess.Popen[str]] = []

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KOS_SEE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str, expect: int = 0) -> object:
        done = self.run(*args, "--json")
        assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def serve(self) -> subprocess.Popen[str]:
        server = subprocess.Popen(
            [*KOS_SEE, "serve", "--slots", "2"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.servers.append(server)
        deadline = time.monotonic() + 20
        # Serving starts when the CLI's wake-up reaches it: submit finds it then.
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise AssertionError(f"serve exited: {server.stderr.read()}")
            if self._serving():
                return server
            time.sleep(0.05)
        raise AssertionError("serve did not start within 20 s")

    def _serving(self) -> bool:
        probe = [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from kos_see.events.wakeup import engine_listening; "
            "sys.exit(0 if engine_listening(Path(sys.argv[1])) else 1)",
            str(self.home),
        ]
        return subprocess.run(probe, env=self.env).returncode == 0

    def stop(self, server: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
        server.send_signal(sig)
        _out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        return err

    def close(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                server.kill()
                server.communicate()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path / "home")
    done = runner.run("init")
    assert done.returncode == 0, done.stderr
    yield runner
    runner.close()


def write_service(
    folder: Path, name: str, source: str, tables: str = "", **manifest: object
) -> Path:
    """A service folder; ``manifest`` holds scalar keys, ``tables`` TOML tables."""
    folder.mkdir(parents=True)
    lines = [f'name = "{name}"', 'version = "1.0.0"', 'entrypoint = "main.py"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in manifest.items()]
    text = "\n".join(lines) + "\n" + textwrap.dedent(tables)
    (folder / "service.toml").write_text(text)
    (folder / "main.py").write_text(textwrap.dedent(source))
    return folder


COUNTER = """
    import os
    import time
    from kos_see import service

    data = service.inputs()
    # A test that must act while the task runs holds it here until it
    # creates this file, however slowly the machine runs.
    while data.get("gate") and not os.path.exists(data["gate"]):
        time.sleep(0.02)
    for step in range(data.get("steps", 3)):
        service.progress(step + 1, data.get("steps", 3), message=f"step {step + 1}")
        service.log(f"did step {step + 1}")
        time.sleep(data.get("pause", 0.0))
    if data.get("mark"):
        with open(data["mark"], "a") as handle:
            handle.write("done\\n")
    service.result({"steps": data.get("steps", 3)})
"""


def test_init_writes_a_commented_config_and_config_show_has_the_spec_keys(cli: Cli):
    text = (cli.home / "config.toml").read_text()
    assert "# kOS Service Execution Engine configuration." in text
    shown = cli.json("config", "show")
    assert shown["execution"]["worker_timeout"] == 300
    assert shown["execution"]["max_concurrent_tasks"] == 32
    assert shown["execution"]["default_runner"] == "local_python"
    assert shown["queue"] == {
        **shown["queue"],
        "retry_limit": 5,
        "retry_backoff": "exponential",
    }
    assert shown["security"]["task_isolation"] is True
    assert shown["security"]["allow_unsigned"] is False
    assert shown["security"]["max_log_retention"] == 30 * 86400
    assert shown["telemetry"] == {"enable_metrics": True, "provider": "prometheus"}


def test_a_bad_config_fails_at_start_naming_the_key(cli: Cli):
    path = cli.home / "config.toml"
    path.write_text(path.read_text().replace("[queue]", "[queue]\nretry_limt = 3"))
    done = cli.run("serve")
    assert done.returncode == 2
    assert "queue.retry_limt" in done.stderr
    text = path.read_text().replace("retry_limt = 3\n", "")
    path.write_text(text.replace("retry_limit = 5 ", 'retry_limit = "x" '))
    done = cli.run("config", "show")
    assert done.returncode == 2
    assert "queue.retry_limit" in done.stderr


def test_submit_without_an_engine_queues_and_says_so_then_serve_runs_it(
    cli: Cli, tmp_path: Path
):
    write_service(tmp_path / "svc", "counter", COUNTER, retry_limit=0)
    added = cli.json("services", "add", str(tmp_path / "svc"))
    assert added[0]["service"] == "counter@1.0.0" and added[0]["new"] is True
    listed = cli.json("services", "list")
    assert [s["name"] for s in listed] == ["counter"]

    done = cli.run("submit", "counter", "--input", '{"steps": 2}')
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert "no engine is serving" in done.stderr
    assert cli.json("status", task_id)["state"] == "queued"

    server = cli.serve()
    events = subprocess.run(
        [*KOS_SEE, "watch", task_id, "--json"],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert events.returncode == 0, events.stderr
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    states = [e["state"] for e in lines if e["kind"] == "state"]
    assert states == ["received", "queued", "leased", "running", "succeeded"]
    assert any(e["kind"] == "progress" and e["done"] == 2 for e in lines)

    assert cli.json("result", task_id)["result"] == {"steps": 2}
    logs = cli.run("logs", task_id)
    assert "did step 2" in logs.stdout
    cli.stop(server)


def test_exit_codes_tell_usage_refusal_failure_and_success(cli: Cli, tmp_path: Path):
    write_service(
        tmp_path / "ok",
        "counter",
        COUNTER,
        retry_limit=0,
        tables="""
        [input_schema]
        type = "object"
        properties.steps.type = "integer"
    """,
    )
    write_service(
        tmp_path / "bad",
        "broken",
        "raise SystemExit('broken on purpose')",
        retry_limit=0,
    )
    assert (
        cli.run(
            "services", "add", str(tmp_path / "ok"), str(tmp_path / "bad")
        ).returncode
        == 0
    )
    cli.serve()

    ok = cli.json("submit", "counter", "--input", '{"steps": 1}', "--wait")
    assert ok["state"] == "succeeded"

    failed = cli.json("submit", "broken", "--wait", expect=4)
    assert failed["state"] == "failed"
    assert "broken on purpose" in failed["error"]

    usage = cli.run("submit", "counter", "--input", "{not json")
    assert usage.returncode == 2 and "not valid JSON" in usage.stderr

    refused = cli.json("submit", "counter", "--input", '{"steps": "x"}', expect=3)
    assert refused["error"] == "invalid_input"
    assert refused["violations"][0]["path"] == "$.steps"

    unknown = cli.json("status", "nosuchtask", expect=3)
    assert unknown["error"] == "unknown_task"

    missing = cli.run("submit", "nosuchservice")
    assert missing.returncode == 3 and "nosuchservice" in missing.stderr


def test_cancel_a_running_task_from_the_cli(cli: Cli, tmp_path: Path):
    write_service(tmp_path / "svc", "counter", COUNTER, retry_limit=0)
    cli.run("services", "add", str(tmp_path / "svc"))
    cli.serve()
    request = json.dumps({"steps": 2, "gate": str(tmp_path / "never-made")})
    task_id = cli.run("submit", "counter", "--input", request).stdout.strip()
    deadline = time.monotonic() + 20
    while cli.json("status", task_id)["state"] != "running":
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.05)
    assert cli.run("cancel", task_id).returncode == 0
    deadline = time.monotonic() + 10
    while (state := cli.json("status", task_id)["state"]) == "running":
        assert time.monotonic() < deadline, "cancel did not stop the task"
        time.sleep(0.05)
    assert state == "cancelled"
    assert cli.run("result", task_id).returncode == 4


def test_sigterm_mid_task_requeues_it_and_a_restarted_serve_finishes_it_once(
    cli: Cli, tmp_path: Path
):
    write_service(tmp_path / "svc", "counter", COUNTER, retry_limit=0)
    cli.run("services", "add", str(tmp_path / "svc"))
    mark = tmp_path / "completions.txt"
    server = cli.serve()
    gate = tmp_path / "gate"
    request = json.dumps({"steps": 2, "gate": str(gate), "mark": str(mark)})
    task_id = cli.run("submit", "counter", "--input", request).stdout.strip()
    deadline = time.monotonic() + 20
    while cli.json("status", task_id)["state"] != "running":
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.05)

    err = cli.stop(server)
    assert "SIGTERM" in err
    stopped = cli.json("status", task_id)
    assert stopped["state"] == "queued", stopped
    assert [a["outcome"] for a in stopped["attempt_details"]] == ["released"]
    assert not mark.exists()

    gate.touch()
    cli.serve()
    deadline = time.monotonic() + 30
    while (task := cli.json("status", task_id))["state"] != "succeeded":
        assert task["state"] in ("queued", "leased", "running"), task
        assert time.monotonic() < deadline, "restarted serve did not finish the task"
        time.sleep(0.1)
    assert [a["outcome"] for a in task["attempt_details"]] == ["released", "succeeded"]
    assert mark.read_text() == "done\n"


def test_only_one_engine_serves_a_home(cli: Cli):
    cli.serve()
    second = cli.run("serve", timeout=30)
    assert second.returncode == 3
    assert "already serves" in second.stderr
