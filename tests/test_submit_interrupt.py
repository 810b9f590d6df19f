"""Ctrl-C during `submit --wait` never loses the id of the task it made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]


@pytest.fixture
def env(tmp_path: Path, make_service) -> dict[str, str]:
    """A home with a service and no engine serving it: tasks stay queued."""
    env = {**os.environ, "KOS_SEE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    folder = make_service.folder(make_service("idle", "", register=False))
    for args in (("init",), ("services", "add", str(folder))):
        subprocess.run([*KOS_SEE, *args], env=env, check=True, capture_output=True)
    return env


def _interrupt_after(process: subprocess.Popen[str], ready) -> tuple[str, str]:
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "submit did not start waiting"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=60)


def _task_count(env: dict[str, str]) -> int:
    done = subprocess.run(
        [*KOS_SEE, "list", "--json"], env=env, capture_output=True, text=True
    )
    return len(json.loads(done.stdout))


def _waiting(process: subprocess.Popen[str], env: dict[str, str]) -> bool:
    # The task exists, and the process is asleep (not runnable) on three
    # looks in a row: it is in the wait's poll loop, past the submit.
    if _task_count(env) != 1:
        return False
    for _ in range(3):
        if psutil.Process(process.pid).status() != psutil.STATUS_SLEEPING:
            return False
        time.sleep(0.05)
    return True


def test_the_id_is_printed_before_the_wait(env: dict[str, str]):
    process = subprocess.Popen(
        [*KOS_SEE, "submit", "idle", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_line: list[str] = []

    def printed_id() -> bool:
        if not first_line:
            first_line.append(process.stdout.readline())  # blocks until the id
        return _waiting(process, env)

    out, err = _interrupt_after(process, printed_id)
    assert process.returncode == 130, err
    task_id = first_line[0].strip()
    assert task_id
    assert f"task {task_id} goes on" in err
    status = subprocess.run(
        [*KOS_SEE, "status", task_id, "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(status.stdout)["state"] == "queued"


def test_with_json_the_interrupt_prints_the_task(env: dict[str, str]):
    process = subprocess.Popen(
        [*KOS_SEE, "submit", "idle", "--wait", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = _interrupt_after(process, lambda: _waiting(process, env))
    assert process.returncode == 130, err
    document = json.loads(out)
    assert document["interrupted"] is True
    assert document["state"] == "queued" and document["id"]
