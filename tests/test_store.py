"""The store and the state machine, driven by hand on an engine that does not
serve, so that no worker leases the tasks these tests move."""

from __future__ import annotations

import time

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import IdempotencyConflict, IllegalTransition
from kos_see.models import AttemptFinished, AttemptStarted, TaskRecord
from kos_see.states import TERMINAL, TaskState, allowed, check_transition

# Each test runs on the embedded SQLite store and on PostgreSQL.
pytestmark = pytest.mark.both_stores

OWNER = "test-worker"
SOURCE = """
    def run(inputs):
        return inputs
"""


def submit(engine: Engine, service: str, input=None, **fields) -> TaskRecord:
    request = SubmitRequest(
        service=service, input={} if input is None else input, **fields
    )
    return engine.dispatcher.submit(request).task


def state_events(engine: Engine, task_id: str) -> list[tuple[str | None, str]]:
    return [
        (e.data.get("from"), e.data["state"])
        for e in engine.store.events(task_id)
        if e.kind == "state"
    ]


@pytest.fixture
def svc(make_service) -> str:
    return make_service("echo", SOURCE, entrypoint="main.py:run", retry_limit=1)


# the state machine


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (TaskState.QUEUED, TaskState.RUNNING),  # must be leased first
        (TaskState.RECEIVED, TaskState.SUCCEEDED),
        (TaskState.LEASED, TaskState.SUCCEEDED),  # must run first
        (TaskState.SUCCEEDED, TaskState.QUEUED),
        (TaskState.FAILED, TaskState.RUNNING),
        (TaskState.CANCELLED, TaskState.QUEUED),
        (TaskState.DEAD, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.LEASED),
    ],
)
def test_illegal_transition_raises(source: TaskState, target: TaskState) -> None:
    assert not allowed(source, target)
    with pytest.raises(IllegalTransition) as caught:
        check_transition(source, target)
    assert caught.value.details == {"source": source.value, "target": target.value}


def test_terminal_states_are_final_except_an_operator_retry_of_dead() -> None:
    for source in TERMINAL:
        for target in TaskState:
            expected = source == TaskState.DEAD and target == TaskState.QUEUED
            assert allowed(source, target) is expected, (source, target)


def test_the_lifecycle_is_allowed_step_by_step() -> None:
    path = [
        TaskState.RECEIVED,
        TaskState.QUEUED,
        TaskState.LEASED,
        TaskState.RUNNING,
        TaskState.QUEUED,
        TaskState.LEASED,
        TaskState.RUNNING,
        TaskState.SUCCEEDED,
    ]
    for source, target in zip(path, path[1:], strict=False):
        check_transition(source, target)


def test_store_refuses_an_illegal_transition_and_changes_nothing(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    [lease] = store.lease(OWNER, 1, time.time(), 30)
    before_events = store.events(task.id)
    skip_running = AttemptFinished(
        task.id,
        lease.epoch,
        lease.attempt,
        time.time(),
        outcome="succeeded",
        next_state=TaskState.SUCCEEDED,
        result="1",
    )
    with pytest.raises(IllegalTransition):
        store.apply([skip_running])
    after = store.get_task(task.id)
    assert after.state == TaskState.LEASED
    assert after.result is None
    assert store.events(task.id) == before_events


# a task and its events


def test_submit_writes_the_task_with_its_received_and_queued_events(
    idle_engine: Engine, svc: str
) -> None:
    task = submit(idle_engine, svc, {"x": 1})
    stored = idle_engine.store.get_task(task.id)
    assert stored is not None
    assert stored.state == TaskState.QUEUED
    assert stored.input_value() == {"x": 1}
    assert state_events(idle_engine, task.id) == [
        (None, "received"),
        ("received", "queued"),
    ]


def test_every_state_change_has_its_event_in_order(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    [lease] = store.lease(OWNER, 1, time.time(), 30)
    now = time.time()
    refused = store.apply(
        [
            AttemptStarted(task.id, lease.epoch, lease.attempt, OWNER, 4242, now),
            AttemptFinished(
                task.id,
                lease.epoch,
                lease.attempt,
                now + 0.1,
                outcome="succeeded",
                next_state=TaskState.SUCCEEDED,
                result='{"ok":true}',
            ),
        ]
    )
    assert refused == []
    done = store.get_task(task.id)
    assert done.state == TaskState.SUCCEEDED
    assert done.result_value() == {"ok": True}
    assert done.finished_at is not None
    assert state_events(idle_engine, task.id) == [
        (None, "received"),
        ("received", "queued"),
        ("queued", "leased"),
        ("leased", "running"),
        ("running", "succeeded"),
    ]
    [attempt] = store.attempts(task.id)
    assert (attempt.number, attempt.epoch, attempt.pid, attempt.outcome) == (
        1,
        lease.epoch,
        4242,
        "succeeded",
    )


# idempotency


def test_idempotency_key_returns_the_same_task(idle_engine: Engine, svc: str) -> None:
    dispatcher = idle_engine.dispatcher
    request = SubmitRequest(service=svc, input={"a": 1}, idempotency_key="k-1")
    first = dispatcher.submit(request)
    again = dispatcher.submit(request)
    assert first.created is True
    assert again.created is False
    assert again.task.id == first.task.id
    assert idle_engine.store.state_counts() == {"queued": 1}


def test_same_key_with_other_input_is_a_conflict(idle_engine: Engine, svc: str) -> None:
    dispatcher = idle_engine.dispatcher
    first = dispatcher.submit(
        SubmitRequest(service=svc, input={"a": 1}, idempotency_key="k-1")
    )
    with pytest.raises(IdempotencyConflict) as caught:
        dispatcher.submit(
            SubmitRequest(service=svc, input={"a": 2}, idempotency_key="k-1")
        )
    assert caught.value.details["task_id"] == first.task.id
    assert idle_engine.store.state_counts() == {"queued": 1}


def test_idempotency_keys_are_per_tenant(idle_engine: Engine, svc: str) -> None:
    dispatcher = idle_engine.dispatcher
    one = dispatcher.submit(
        SubmitRequest(service=svc, input={}, tenant="t1", idempotency_key="same")
    )
    two = dispatcher.submit(
        SubmitRequest(service=svc, input={}, tenant="t2", idempotency_key="same")
    )
    assert two.created is True
    assert two.task.id != one.task.id


# leases, epochs, fencing


def test_lease_epochs_increase_and_a_stale_write_is_refused(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    now = time.time()
    [first] = store.lease(OWNER, 1, now, lease_seconds=1)
    assert first.attempt == 1
    assert store.rescue(now + 5) == [task.id]
    rescued = store.get_task(task.id)
    assert rescued.state == TaskState.QUEUED
    assert rescued.lease_epoch > first.epoch
    [second] = store.lease("other-worker", 1, now + 5, lease_seconds=30)
    assert second.epoch > rescued.lease_epoch > first.epoch
    assert second.attempt == 2
    before = store.get_task(task.id)

    stale = AttemptFinished(
        task.id,
        first.epoch,
        first.attempt,
        now + 6,
        outcome="succeeded",
        next_state=TaskState.QUEUED,
        result='"stale"',
        error="from a superseded lease",
    )
    refused = store.apply([stale])

    assert [r.write for r in refused] == [stale]
    assert refused[0].current_epoch == second.epoch
    assert refused[0].current_state == TaskState.LEASED
    assert store.get_task(task.id) == before
    assert not any(
        e.data.get("reason") == "from a superseded lease" for e in store.events(task.id)
    )


def test_a_stale_write_does_not_stop_the_current_one_in_the_same_batch(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    now = time.time()
    [old] = store.lease(OWNER, 1, now, lease_seconds=1)
    store.rescue(now + 5)
    [new] = store.lease(OWNER, 1, now + 5, lease_seconds=30)
    refused = store.apply(
        [
            AttemptStarted(task.id, old.epoch, old.attempt, OWNER, 1, now + 6),
            AttemptStarted(task.id, new.epoch, new.attempt, OWNER, 2, now + 6),
        ]
    )
    assert [r.write.epoch for r in refused] == [old.epoch]
    assert store.get_task(task.id).state == TaskState.RUNNING
    assert [(a.number, a.pid) for a in store.attempts(task.id)] == [(2, 2)]


def test_renew_reports_a_superseded_lease_as_lost(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    now = time.time()
    [old] = store.lease(OWNER, 1, now, lease_seconds=1)
    store.rescue(now + 5)
    [new] = store.lease(OWNER, 1, now + 5, lease_seconds=1)
    assert store.renew(OWNER, [(task.id, old.epoch)], now + 5, 30).lost == {task.id}
    kept = store.renew(OWNER, [(task.id, new.epoch)], now + 5, 30)
    assert kept.lost == frozenset()
    assert store.get_task(task.id).lease_expires_at == pytest.approx(now + 35)


# rescue


def test_rescue_returns_an_expired_lease_to_the_queue(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    now = time.time()
    [lease] = store.lease(OWNER, 1, now, lease_seconds=2)
    store.apply([AttemptStarted(task.id, lease.epoch, 1, OWNER, 99, now)])
    assert store.rescue(now + 1) == []  # not expired yet
    assert store.get_task(task.id).state == TaskState.RUNNING

    assert store.rescue(now + 3) == [task.id]
    back = store.get_task(task.id)
    assert back.state == TaskState.QUEUED
    assert back.lease_epoch == lease.epoch + 1
    assert back.lease_owner is None
    [attempt] = store.attempts(task.id)
    assert attempt.outcome == "lost"
    assert attempt.ended_at == now + 3
    assert state_events(idle_engine, task.id)[-1] == ("running", "queued")


def test_rescue_sends_a_task_with_no_attempts_left_to_dead(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)  # retry_limit=1: two attempts
    assert task.max_attempts == 2
    now = time.time()
    for round_ in range(2):
        [lease] = store.lease(OWNER, 1, now + 10 * round_, lease_seconds=1)
        assert lease.attempt == round_ + 1
        assert store.rescue(now + 10 * round_ + 5) == [task.id]
    dead = store.get_task(task.id)
    assert dead.state == TaskState.DEAD
    assert dead.error_kind == "lost"
    assert dead.finished_at == now + 15
    assert dead.lease_epoch == lease.epoch + 1
    assert state_events(idle_engine, task.id)[-1] == ("leased", "dead")
    assert store.lease(OWNER, 1, now + 100, 30) == []


def test_rescue_of_a_task_being_cancelled_ends_it_cancelled(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    now = time.time()
    store.lease(OWNER, 1, now, lease_seconds=1)
    marked = store.cancel_task(task.id, now)
    assert marked.state == TaskState.LEASED
    assert marked.cancel_requested is True
    store.rescue(now + 5)
    assert store.get_task(task.id).state == TaskState.CANCELLED


# cancel


def test_cancel_a_queued_task(idle_engine: Engine, svc: str) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    cancelled = idle_engine.dispatcher.cancel(task.id)
    assert cancelled.state == TaskState.CANCELLED
    assert cancelled.finished_at is not None
    assert store.get_task(task.id).state == TaskState.CANCELLED
    assert state_events(idle_engine, task.id)[-1] == ("queued", "cancelled")
    assert store.lease(OWNER, 1, time.time() + 1, 30) == []
