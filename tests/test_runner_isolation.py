"""Hostile and broken services, run through the whole engine.

Each test submits to a serving engine, waits for the end, checks the final
state and error, checks that no process of the task is left, and checks that
the engine still runs an ordinary task afterwards.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.states import TaskState

GIB = 1024**3


@pytest.fixture
def finish(check_engine_healthy, wait_no_task_processes):  # noqa: ANN001, ANN201
    """``finish(task)``: the checks every test here ends with."""

    def check(task) -> None:  # noqa: ANN001
        wait_no_task_processes(task.id)
        check_engine_healthy()

    return check


def wait_for_state(engine: Engine, task_id: str, state: str, within: float) -> None:
    deadline = time.monotonic() + within
    while engine.store.get_task(task_id).state != state:
        assert time.monotonic() < deadline, f"task {task_id} never became {state}"
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_a_gigabyte_of_stdout_is_drained_counted_and_capped(
    engine: Engine, make_service, run_task, finish  # noqa: ANN001
) -> None:
    name = make_service("firehose", """
        import os
        block = b"x" * (1024 * 1024)
        for _ in range(1024):
            os.write(1, block)
    """, timeout=90, retry_limit=0)
    rss_before = psutil.Process().memory_info().rss
    task = run_task(name, timeout=100)
    assert task.state == TaskState.SUCCEEDED, task.error
    [attempt] = engine.store.attempts(task.id)
    cap = engine.config.execution.output_cap_bytes
    assert attempt.stdout_bytes == GIB
    assert attempt.stdout.startswith("x" * cap)
    kept = attempt.stdout.split("\n[...", 1)[0]
    assert kept == "x" * cap
    assert f"{GIB - cap} more bytes not kept" in attempt.stdout
    # drained, never buffered: the engine did not grow by anything near 1 GiB
    assert psutil.Process().memory_info().rss - rss_before < 256 * 1024**2
    finish(task)
