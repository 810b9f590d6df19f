"""Stopping the engine leaves nothing of its attempts behind: a graceful
stop sweeps escaped grandchildren, a second signal cuts the grace short, and
an engine started after one that was killed outright finishes off what the
lost attempts had started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.states import TaskState

ESCAPER = """
    import subprocess, time
    from kos_see import service
    escaped = subprocess.Popen(["sleep", "301"], start_new_session=True)
    grouped = subprocess.Popen(["sleep", "302"])
    service.output({"escaped": escaped.pid, "grouped": grouped.pid})
    time.sleep(60)
"""


def _pids(engine, task_id, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for event in engine.store.events(task_id):
            if event.kind == "output":
                return event.data["data"]["escaped"], event.data["data"]["grouped"]
        time.sleep(0.05)
    raise AssertionError("the service never reported its children")


def _gone(pid, within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().split()[2] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(60)
def test_a_graceful_stop_sweeps_grandchildren_that_left_the_group(
    make_engine, make_service
):
    engine = make_engine(serve=True, execution={"shutdown_grace": 0.2})
    make_service("escaper", ESCAPER, retry_limit=0, timeout=120)
    task = engine.dispatcher.submit(SubmitRequest("escaper", {})).task
    escaped, grouped = _pids(engine, task.id)
    try:
        engine.stop()
        assert _gone(grouped)
        assert _gone(escaped), "a setsid grandchild outlived a graceful stop"
        assert engine.store.get_task(task.id).state == TaskState.QUEUED
    finally:
        for pid in (escaped, grouped):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


SERVE = """
import sys
from pathlib import Path
from kos_see.config import validate_config
from kos_see.engine import Engine
from kos_see.home import Home
engine = Engine.open(Home(Path(sys.argv[1])), validate_config({
    "execution": {"lease_seconds": 2, "heartbeat_seconds": 0.5}}))
engine.serve()
import time
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_after_an_engine_is_killed_outright_the_next_one_kills_what_it_left(
    home, make_engine, make_service, tmp_path
):
    make_service("escaper", ESCAPER, retry_limit=0, timeout=120)
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    server = subprocess.Popen([sys.executable, str(script), str(home.root)])
    watcher = make_engine(serve=False)
    task = watcher.dispatcher.submit(SubmitRequest("escaper", {})).task
    escaped = grouped = None
    try:
        escaped, grouped = _pids(watcher, task.id, within=30)
        server.kill()
        server.wait(timeout=10)
        # Both children outlive the killed engine (the main process does not).
        assert not _gone(escaped, within=0.5) and not _gone(grouped, within=0.5)
        make_engine(serve=True)
        assert _gone(escaped) and _gone(grouped)
        final = watcher.wait(task.id, timeout=10)
        assert final.state == TaskState.FAILED and final.error_kind == "lost"
    finally:
        if server.poll() is None:
            server.kill()
        for pid in (escaped, grouped):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_second_stop_request_cuts_the_grace_short(make_engine, make_service):
    engine = make_engine(serve=True, execution={"shutdown_grace": 30})
    make_service("sleeper", "import time\ntime.sleep(60)\n", retry_limit=0, timeout=120)
    task = engine.dispatcher.submit(SubmitRequest("sleeper", {})).task
    deadline = time.monotonic() + 15
    while engine.store.get_task(task.id).state != TaskState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    engine.pool.hurry()
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 10
    assert engine.store.get_task(task.id).state == TaskState.QUEUED
