"""Writers at the same moment: what the PostgreSQL store must keep apart
(several processes write at once) and the embedded one gets from its single
writer. Both stores run these."""

from __future__ import annotations

import threading

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine

pytestmark = pytest.mark.both_stores

SOURCE = """
def run(inputs):
    return inputs
"""


def at_once(count: int, work) -> list:  # type: ignore[no-untyped-def]
    """Run ``work(n)`` in ``count`` threads released together."""
    gate = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def one(n: int) -> None:
        gate.wait()
        try:
            results[n] = work(n)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_one_idempotency_key_submitted_at_once_names_one_task(
    make_engine, make_service
) -> None:
    make_service("echo", SOURCE, entrypoint="main.py:run")
    engines: list[Engine] = [make_engine(serve=False) for _ in range(4)]

    def submit(n: int) -> tuple[str, bool]:
        request = SubmitRequest("echo", {"x": 1}, idempotency_key="same-key")
        done = engines[n].dispatcher.submit(request)
        return done.task.id, done.created

    results = at_once(4, submit)
    assert len({task_id for task_id, _ in results}) == 1, results
    assert sum(created for _, created in results) == 1, results
    assert engines[0].store.state_counts() == {"queued": 1}


def test_leases_at_once_never_hand_out_one_task_twice(make_engine, make_service):
    make_service("echo", SOURCE, entrypoint="main.py:run")
    engines: list[Engine] = [make_engine(serve=False) for _ in range(4)]
    ids = {
        engines[0].dispatcher.submit(SubmitRequest("echo", {"n": n})).task.id
        for n in range(40)
    }

    def lease(n: int) -> list[str]:
        got: list[str] = []
        for _ in range(6):
            got += [
                lease.task_id
                for lease in engines[n].store.lease(f"owner-{n}", 3, 1e10, 30)
            ]
        return got

    leased = [task_id for got in at_once(4, lease) for task_id in got]
    assert len(leased) == len(set(leased)), "a task was leased twice"
    assert set(leased) <= ids
    assert len(leased) == min(40, 4 * 6 * 3)


def test_rescuers_at_once_requeue_each_expired_lease_once(make_engine, make_service):
    make_service("echo", SOURCE, entrypoint="main.py:run", retry_limit=3)
    engines: list[Engine] = [make_engine(serve=False) for _ in range(4)]
    store = engines[0].store
    for n in range(20):
        engines[0].dispatcher.submit(SubmitRequest("echo", {"n": n}))
    leases = store.lease("gone", 20, 1000.0, 1)
    assert len(leases) == 20

    rescued = at_once(4, lambda n: engines[n].store.rescue(2000.0))
    flat = [task_id for got in rescued for task_id in got]
    assert sorted(flat) == sorted(lease.task_id for lease in leases)
    for lease in leases:
        task = store.get_task(lease.task_id)
        assert task.state == "queued"
        assert task.lease_epoch == lease.epoch + 1  # superseded exactly once
        lost = [
            e for e in store.events(lease.task_id) if e.data.get("outcome") == "lost"
        ]
        assert len(lost) == 1
