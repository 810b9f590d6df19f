"""Deferred tasks: invisible until due, found by index, cheap however many wait.

The store is driven by hand on an engine that does not serve, with explicit
``now`` values, so that "before" and "after" a not-before time are exact.
"""

from __future__ import annotations

import random
import re
import tracemalloc
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.models import AttemptFinished, AttemptStarted
from kos_see.states import TaskState
from kos_see.store import statements as q
from kos_see.store.schema import tasks

# Each test runs on the embedded SQLite store and on PostgreSQL.
pytestmark = pytest.mark.both_stores

NOW = 1_800_000_000.0
OWNER = "test-worker"
MIB = 1024 * 1024

SOURCE = """
    def run(inputs):
        return inputs
"""


@pytest.fixture
def svc(make_service) -> str:
    return make_service("echo", SOURCE, entrypoint="main.py:run", retry_limit=2)


def submit(engine: Engine, service: str, now: float = NOW, **fields: Any):
    request = SubmitRequest(service=service, input={}, **fields)
    return engine.dispatcher.submit(request, now=now).task


def test_a_task_with_a_future_not_before_waits_in_the_deferred_lane(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    later = submit(idle_engine, svc, not_before=NOW + 100)
    assert later.state == TaskState.QUEUED
    assert (later.queue_class, later.lane, later.run_class) == (
        "deferred",
        "deferred",
        "batch",
    )
    assert later.not_before == NOW + 100
    assert store.next_ready_at() == NOW + 100

    assert store.lease(OWNER, 10, NOW, 30) == []
    assert store.lease(OWNER, 10, NOW + 99.999, 30) == []
    assert store.get_task(later.id).lane == "deferred"

    [lease] = store.lease(OWNER, 10, NOW + 100, 30)
    assert lease.task_id == later.id
    leased = store.get_task(later.id)
    assert (leased.state, leased.lane) == (TaskState.LEASED, "batch")
    assert store.next_ready_at() is None


def test_a_due_task_goes_first_and_a_deferred_one_is_left(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    later = submit(idle_engine, svc, not_before=NOW + 60, queue_class="realtime")
    now_task = submit(idle_engine, svc)
    past = submit(idle_engine, svc, not_before=NOW - 60)  # already due: not deferred
    assert later.lane == "deferred" and later.run_class == "realtime"
    assert (now_task.lane, past.lane) == ("batch", "batch")
    assert past.queue_class == "batch"

    leased = store.lease(OWNER, 10, NOW + 1, 30)
    assert {lease.task_id for lease in leased} == {now_task.id, past.id}
    [lease] = store.lease(OWNER, 10, NOW + 60, 30)
    assert lease.task_id == later.id
    assert store.get_task(later.id).lane == "realtime"


def test_a_retry_waits_out_its_backoff_in_the_deferred_lane(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    task = submit(idle_engine, svc)
    [lease] = store.lease(OWNER, 1, NOW, 30)
    store.apply(
        [
            AttemptStarted(task.id, lease.epoch, 1, OWNER, 4242, NOW + 0.5),
            AttemptFinished(
                task.id,
                lease.epoch,
                1,
                NOW + 1,
                outcome="failed",
                next_state=TaskState.QUEUED,
                not_before=NOW + 5,
                error="exited with code 1",
            ),
        ]
    )
    back = store.get_task(task.id)
    assert (back.state, back.lane, back.not_before) == (
        TaskState.QUEUED,
        "deferred",
        NOW + 5,
    )
    assert store.next_ready_at() == NOW + 5
    assert store.lease(OWNER, 1, NOW + 4.9, 30) == []
    [again] = store.lease(OWNER, 1, NOW + 5, 30)
    assert (again.task_id, again.attempt) == (task.id, 2)


# The due-time and lease queries must be index searches: a scan of the task
# table (or of every queued row) costs time per lease in proportion to how
# many tasks wait, deferred or not.


def query_plan(engine: Engine, statement: Any, params: dict[str, Any]) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of a store statement, with its parameters
    bound as the store binds them (a bound value can decide whether a
    partial index applies). On PostgreSQL, its EXPLAIN in the same words
    (see ``postgres_plan``)."""
    sql_engine = engine.store.engine  # type: ignore[attr-defined]
    compiled = statement.compile(dialect=sql_engine.dialect)
    if sql_engine.dialect.name == "postgresql":
        return postgres_plan(
            sql_engine, compiled.string, compiled.construct_params(params)
        )
    values = compiled.construct_params(params)
    positional = tuple(values[name] for name in compiled.positiontup)
    with sql_engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + compiled.string, positional
        ).all()
    return [row[-1] for row in rows]


def postgres_plan(sql_engine: Any, sql: str, values: dict[str, Any]) -> list[str]:
    """PostgreSQL's plan of ``sql``, each step on the tasks table as SQLite
    words it ("SEARCH tasks USING INDEX ix", "SCAN tasks").

    Sequential scans are switched off for the question: on a test's few rows
    the planner rightly prefers one, and what is asked is whether an index
    can serve the query when the table is large; with no usable index the
    plan stays a scan (``test_the_query_plan_check_can_tell_a_scan``)."""
    with sql_engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        lines = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, values)]
    steps = []
    for line in lines:
        found = re.search(
            r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Index Scan)"
            r"(?: using (\w+))?(?: on (\w+))?",
            line,
        )
        if found is None:
            continue
        kind, index, table = found.groups()
        if kind == "Seq Scan" and index is None and table == "tasks":
            steps.append("SCAN tasks")
        elif kind == "Bitmap Index Scan" and table and table.startswith("ix_tasks"):
            steps.append(f"SEARCH tasks USING INDEX {table}")
        elif index is not None and table == "tasks":
            steps.append(f"SEARCH tasks USING INDEX {index}")
    return steps


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        pytest.param(
            q.promote_due,
            {"now": NOW},
            "ix_tasks_due",
            id="promote_due",
        ),
        pytest.param(
            q.next_due,
            {},
            "ix_tasks_due",
            id="next_ready_at",
        ),
        pytest.param(
            q.heads,
            {"lane": "batch", "tenant": "acme", "limit": 8},
            "ix_tasks_ready",
            id="heads",
        ),
        pytest.param(
            q.active_tenants, {"lane": "batch"}, "ix_tasks_ready", id="active_tenants"
        ),
    ],
)
def test_lease_and_due_time_queries_search_an_index(
    idle_engine: Engine, svc: str, statement: Any, params: dict[str, Any], index: str
) -> None:
    submit(idle_engine, svc, not_before=NOW + 60)
    submit(idle_engine, svc)
    plan = query_plan(idle_engine, statement, params)
    on_tasks = [step for step in plan if " tasks " in f"{step} "]
    assert on_tasks, plan
    usable = {index}
    if idle_engine.store_kind == "postgresql":
        # On a test's few rows PostgreSQL's costs may pick the index led by
        # state instead, which also reads queued rows only, never finished ones.
        usable.add("ix_tasks_state_created")
    for step in on_tasks:
        assert any(
            f"USING INDEX {name}" in step or f"USING COVERING INDEX {name}" in step
            for name in usable
        ), plan
        assert not step.startswith("SCAN tasks"), plan


def test_the_query_plan_check_can_tell_a_scan(idle_engine: Engine) -> None:
    # The same check on a query no index serves sees the full scan.
    unindexed = sa.select(tasks.c.id).where(tasks.c.input == sa.bindparam("text"))
    plan = query_plan(idle_engine, unindexed, {"text": "{}"})
    assert plan == ["SCAN tasks"]


# 100,000 deferred tasks


def bulk_tasks(
    engine: Engine, template_id: str, due: list[float], later: list[float]
) -> tuple[list[str], list[str]]:
    """Copies of a submitted task's row with new ids, tenants and not-before
    times, inserted in one transaction with one executemany: the columns and
    values are exactly the store's own."""
    sql_engine = engine.store.engine  # type: ignore[attr-defined]
    names = [column.name for column in tasks.c]
    with sql_engine.connect() as conn:
        template = (
            conn.execute(sa.select(tasks).where(tasks.c.id == template_id))
            .one()
            ._mapping
        )
    changed = ("id", "tenant", "not_before", "rank_at")
    at = {name: names.index(name) for name in changed}
    base = [template[name] for name in names]
    rows = []
    due_ids, later_ids = [], []
    for number, not_before in enumerate(due + later):
        task_id = f"{number:012x}{'bulk':0>12}"
        (due_ids if number < len(due) else later_ids).append(task_id)
        row = list(base)
        row[at["id"]] = task_id
        row[at["tenant"]] = f"tenant-{number % 7}"
        row[at["not_before"]] = not_before
        row[at["rank_at"]] = NOW + number * 1e-6
        rows.append(tuple(row))
    if sql_engine.dialect.name == "postgresql":
        copy_rows(sql_engine, names, rows)
        return due_ids, later_ids
    insert = (
        f"INSERT INTO tasks ({', '.join(names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    with sql_engine.begin() as conn:
        conn.exec_driver_sql(insert, rows)
    return due_ids, later_ids


def copy_rows(sql_engine: Any, names: list[str], rows: list[tuple]) -> None:
    """PostgreSQL's COPY: the bulk path of its driver, a second for 100k rows."""
    raw = sql_engine.raw_connection()
    try:
        statement = f"COPY tasks ({', '.join(names)}) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def test_with_100k_deferred_tasks_a_lease_takes_only_due_ones_in_flat_memory(
    idle_engine: Engine, svc: str
) -> None:
    store = idle_engine.store
    template = submit(idle_engine, svc, not_before=NOW + 10 * 86400)
    rng = random.Random(11)
    later = [NOW + rng.uniform(1, 86400) for _ in range(100_000)]
    due = [NOW - rng.uniform(0, 3600) for _ in range(100)]
    due_ids, _later_ids = bulk_tasks(idle_engine, template.id, due, later)
    assert store.state_counts() == {"queued": 100_101}
    assert store.next_ready_at() == min(due)

    leased = store.lease(OWNER, 500, NOW, 30)
    assert sorted(lease.task_id for lease in leased) == sorted(due_ids)
    assert all(lease.task.not_before <= NOW for lease in leased)
    assert store.state_counts() == {"queued": 100_001, "leased": 100}
    assert store.next_ready_at() == min(later)

    process = psutil.Process()
    for _ in range(3):  # warm the statement caches
        assert store.lease(OWNER, 500, NOW, 30) == []
    before = process.memory_info().rss
    for round_ in range(20):
        assert store.lease(OWNER, 500, NOW + 0.5, 30) == []
        if round_ % 4 == 0:
            assert store.next_ready_at() == min(later)
    grown = process.memory_info().rss - before
    assert grown < 4 * MIB, f"RSS grew {grown / MIB:.1f} MiB over 20 leases"

    # Nothing a lease does may hold the waiting tasks in Python at once.
    tracemalloc.start()
    try:
        assert store.lease(OWNER, 500, NOW + 1, 30) == []
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MIB, f"a lease allocated {peak / MIB:.1f} MiB"

    # The earliest of the deferred ones comes due, and only it is leased.
    first = min(range(len(later)), key=later.__getitem__)
    [lease] = store.lease(OWNER, 500, later[first], 30)
    assert lease.task.not_before == later[first]
