"""The store gives the same results whether its statements run on the SQLite
driver connection (the default) or through SQLAlchemy connections (the path
every other database takes)."""

from __future__ import annotations

import pytest

from kos_see.dispatcher import Dispatcher, SubmitRequest
from kos_see.models import AttemptFinished, AttemptStarted
from kos_see.queue.fair import Rules
from kos_see.registry import Registry
from kos_see.states import TaskState
from kos_see.store.sql import SqlStore

NOOP = "def run(inputs):\n    return inputs\n"


@pytest.mark.parametrize("use_driver", [True, False], ids=["driver", "sqlalchemy"])
def test_one_task_through_the_store(
    home_store, make_service, engine_config, use_driver
):
    make_service("echo", NOOP, entrypoint="main.py:run", retry_limit=1)
    store = SqlStore(home_store.engine, use_driver=use_driver)
    dispatcher = Dispatcher(store, Registry(store), engine_config)
    first = dispatcher.submit(SubmitRequest("echo", {"n": 1}, tenant="a"), now=100.0)
    again = dispatcher.submit(
        SubmitRequest("echo", {"n": 1}, tenant="a", idempotency_key="k"), now=101.0
    )
    same = dispatcher.submit(
        SubmitRequest("echo", {"n": 1}, tenant="a", idempotency_key="k"), now=102.0
    )
    assert same.task.id == again.task.id and not same.created

    leases = store.lease("w", 5, 200.0, 30, Rules())
    assert [lease.task_id for lease in leases] == [first.task.id, again.task.id]
    lease = leases[0]
    refused = store.apply(
        [
            AttemptStarted(lease.task_id, lease.epoch, 1, "w", 42, 201.0),
            AttemptFinished(
                lease.task_id,
                lease.epoch,
                1,
                202.0,
                "succeeded",
                TaskState.SUCCEEDED,
                result='{"n": 1}',
            ),
            AttemptFinished(
                lease.task_id,
                lease.epoch + 1,
                1,
                203.0,
                "failed",
                TaskState.FAILED,
                error="late",
            ),
        ]
    )
    assert len(refused) == 1 and refused[0].current_state == TaskState.SUCCEEDED

    done = store.get_task(first.task.id)
    assert done.state == TaskState.SUCCEEDED and done.result_value() == {"n": 1}
    states = [e.data["state"] for e in store.events(first.task.id) if e.kind == "state"]
    assert states == ["received", "queued", "leased", "running", "succeeded"]
    assert store.attempts(first.task.id)[0].pid == 42

    assert store.rescue(10_000.0) == [again.task.id]
    assert store.get_task(again.task.id).state == TaskState.QUEUED
    assert store.latest_version("echo") == "1.0.0"
    assert store.state_counts() == {"succeeded": 1, "queued": 1}
