"""What a service sends over the attempt protocol cannot mislead the engine:
oversized results fail, engine fields cannot be forged, a missing function
entrypoint is caught early, and running out of memory says so."""

from __future__ import annotations

import pytest

from kos_see.errors import ManifestError
from kos_see.states import TaskState

HUGE_RESULT = """
    from kos_see import service
    service.result({"data": "x" * (5 * 1024 * 1024)})
"""

FORGER = """
    import json, os
    line = {"type": "log", "message": "hello", "id": 5, "task_id": "hijack",
            "kind": "state", "state": "succeeded"}
    os.write(int(os.environ["KOS_SEE_EVENTS_FD"]), (json.dumps(line) + "\\n").encode())
"""

GREEDY = """
    def run(inputs):
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
"""


@pytest.mark.timeout(60)
def test_a_result_over_the_line_limit_fails_as_too_large(make_service, run_task):
    name = make_service("huge", HUGE_RESULT, retry_limit=0, timeout=30)
    task = run_task(name, {}, timeout=40)
    assert task.state == TaskState.FAILED
    assert task.error_kind == "result_too_large"
    assert task.result is None


def test_a_service_cannot_forge_the_engines_event_fields(
    engine, make_service, run_task
):
    name = make_service("forger", FORGER, retry_limit=0)
    task = run_task(name, {})
    assert task.state == TaskState.SUCCEEDED
    logs = [e.to_dict() for e in engine.store.events(task.id) if e.kind == "log"]
    assert len(logs) == 1
    forged = logs[0]
    assert forged["task_id"] == task.id and forged["kind"] == "log"
    assert "state" not in forged and forged["service_id"] == 5
    assert forged["service_task_id"] == "hijack"
    assert forged["service_state"] == "succeeded"


def test_a_function_entrypoint_that_does_not_exist_is_refused_at_registration(
    make_service,
):
    with pytest.raises(ManifestError) as caught:
        make_service(
            "nofunc", "def run(inputs):\n    return 1\n", entrypoint="main.py:nothere"
        )
    assert "nothere" in caught.value.message


def test_running_out_of_memory_says_so_with_the_limit(make_service, run_task):
    name = make_service(
        "greedy",
        GREEDY,
        entrypoint="main.py:run",
        retry_limit=0,
        limits={"memory_mb": 256},
        timeout=30,
    )
    task = run_task(name, {}, timeout=40)
    assert task.state == TaskState.FAILED
    assert "MemoryError" in task.error and "256 MiB" in task.error


def test_a_leased_task_shows_no_error_of_its_previous_attempt(
    idle_engine, make_service
):
    from kos_see.dispatcher import SubmitRequest
    from kos_see.models import AttemptFinished, AttemptStarted

    make_service("plain", "pass\n", retry_limit=2)
    task = idle_engine.dispatcher.submit(SubmitRequest("plain", {})).task
    store = idle_engine.store
    [lease] = store.lease("w", 1, 1e12, 30)
    store.apply(
        [
            AttemptStarted(task.id, lease.epoch, lease.attempt, "w", 1, 1e12),
            AttemptFinished(
                task.id,
                lease.epoch,
                lease.attempt,
                1e12,
                "failed",
                TaskState.QUEUED,
                not_before=1e12,
                error="boom",
                error_kind="exit",
            ),
        ]
    )
    assert store.get_task(task.id).error == "boom"
    [again] = store.lease("w", 1, 1e12 + 1, 30)
    assert again.task.error is None
    assert store.get_task(task.id).error is None
    assert store.attempts(task.id)[0].error == "boom"
