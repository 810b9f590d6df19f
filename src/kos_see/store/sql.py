"""The store on SQLAlchemy Core. SQLite (WAL) is the embedded default.

Every state change and its event row are written in one transaction, and
every attempt write is fenced: it applies only while the task's lease epoch
is the one the write presents.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from kos_see.errors import RequestRefused, StoreUnavailable, TaskNotFound
from kos_see.models import (
    AttemptRecord,
    AttemptWrite,
    Event,
    Lease,
    NewTask,
    ServiceRecord,
    TaskRecord,
)
from kos_see.queue.fair import LANES, Candidate, Plan, Rules, Snapshot, plan
from kos_see.queue.stats import Depth, QueueStats, TenantUse, waiting_reasons
from kos_see.states import TERMINAL, TaskState, check_transition
from kos_see.store import driver
from kos_see.store import statements as q
from kos_see.store.base import RefusedWrite, Renewal, Store, TaskFilter
from kos_see.store.driver import DriverConnection
from kos_see.store.schema import (
    attempts,
    events,
    provenance,
    services,
    tasks,
)
from kos_see.store.writes import WriteBatch, state_event

log = logging.getLogger(__name__)

_HELD = (TaskState.LEASED.value, TaskState.RUNNING.value)

_WAITING = (TaskState.RECEIVED.value, TaskState.QUEUED.value)


class SqlStore(Store):
    """The store on SQLAlchemy Core statements.

    On SQLite the statements run on plain ``sqlite3`` connections (see
    ``driver.py``): each thread reads on a connection of its own, and writes
    go through one connection under a lock.
    """

    # Hooks for a backend whose writers run concurrently (PostgreSQL): the
    # statements a lease reads its candidates with, and how a writer locks
    # the task rows it reads before it changes them. SQLite has one writer
    # at a time, so it needs no row locks.
    _heads_statements = (q.heads, q.heads_except, q.heads_of_service)
    _fences_statement = q.fences

    def _locked(self, query: sa.Select, skip_locked: bool = False) -> sa.Select:
        """``query`` as a writer reads it: unchanged where writers never overlap."""
        return query

    def __init__(self, engine: Engine, use_driver: bool = True) -> None:
        self.engine = engine
        # SQLite admits one writer at a time, and a writer that finds the lock
        # taken sleeps in steps of milliseconds. Writers of this process queue
        # on this lock instead, which hands over in microseconds; other
        # processes still meet SQLite's own busy wait.
        self._write_lock = threading.Lock()
        # use_driver=False runs SQLite through SQLAlchemy too, as any other
        # database runs: the tests check both paths give the same results.
        self._on_sqlite = use_driver and engine.dialect.name == "sqlite"
        self._path = engine.url.database or ":memory:"
        self._writer: DriverConnection | None = None
        self._local = threading.local()
        self._readers: list[DriverConnection] = []
        self._readers_lock = threading.Lock()

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._write_lock:
            if not self._on_sqlite:
                with self._sqlalchemy_write() as conn:
                    yield conn
                return
            if self._writer is None:
                self._writer = DriverConnection(driver.connect(self._path))
            conn = self._writer
            try:
                conn.begin_immediate()
                yield conn
                conn.commit()
            except sqlite3.OperationalError as exc:
                conn.rollback()
                raise _unavailable(exc) from exc
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[Any]:
        """A reader's connection. By default each statement reads committed
        data on its own; with ``snapshot`` the whole block reads one snapshot."""
        if not self._on_sqlite:
            with self._sqlalchemy_read() as conn:
                yield conn
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = DriverConnection(driver.connect(self._path))
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        try:
            if snapshot:
                conn.raw.execute("BEGIN DEFERRED")
            yield conn
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc
        finally:
            conn.rollback()

    # Other databases run the same statements through SQLAlchemy connections.

    @contextmanager
    def _sqlalchemy_write(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def _sqlalchemy_read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(sqlite_begin="NONE")
                yield conn
        except sa.exc.OperationalError as exc:
            raise _unavailable(exc) from exc

    # services

    def add_service(self, record: ServiceRecord) -> None:
        with self._write() as conn:
            conn.execute(
                services.insert().values(
                    name=record.name,
                    version=record.version,
                    digest=record.digest,
                    path=record.path,
                    manifest=json.dumps(record.manifest),
                    registered_at=record.registered_at,
                )
            )

    def get_service(self, name: str, version: str | None) -> ServiceRecord | None:
        query = sa.select(services).where(services.c.name == name)
        if version is None:
            query = query.order_by(services.c.registered_at.desc()).limit(1)
        else:
            query = query.where(services.c.version == version)
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _service(row)

    def latest_version(self, name: str) -> str | None:
        with self._read() as conn:
            return conn.execute(q.latest_version, {"name": name}).scalar()

    def list_services(self) -> list[ServiceRecord]:
        query = sa.select(services).order_by(services.c.name, services.c.registered_at)
        with self._read() as conn:
            return [_service(row) for row in conn.execute(query)]

    # tasks

    def create_task(self, task: NewTask) -> tuple[TaskRecord, bool]:
        with self._write() as conn:
            if task.idempotency_key is not None:
                existing = conn.execute(
                    q.task_by_key, {"tenant": task.tenant, "key": task.idempotency_key}
                ).first()
                if existing is not None:
                    return _task(existing), False
            values = _new_task_values(task)
            conn.execute(q.insert_task, values)
            conn.execute(
                q.insert_events,
                [
                    state_event(task.id, 0, task.created_at, "received", None),
                    state_event(task.id, 0, task.created_at, "queued", "received"),
                ],
            )
        return _record_of_new(values), True

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._read() as conn:
            row = conn.execute(q.task_by_id, {"task_id": task_id}).first()
        return None if row is None else _task(row)

    def list_tasks(self, where: TaskFilter) -> list[TaskRecord]:
        query = sa.select(tasks).order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
        if where.state is not None:
            query = query.where(tasks.c.state == where.state.value)
        if where.service is not None:
            query = query.where(tasks.c.service == where.service)
        if where.tenant is not None:
            query = query.where(tasks.c.tenant == where.tenant)
        query = query.limit(where.limit).offset(where.offset)
        with self._read() as conn:
            return [_task(row) for row in conn.execute(query)]

    def cancel_task(self, task_id: str, now: float) -> TaskRecord:
        with self._write() as conn:
            row = conn.execute(
                self._locked(sa.select(tasks).where(tasks.c.id == task_id))
            ).first()
            if row is None:
                raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
            state = TaskState(row.state)
            if state.value in _WAITING:
                self._transition(conn, row, TaskState.CANCELLED, now, "cancelled")
            elif state.value in _HELD:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id == task_id)
                    .values(cancel_requested=True, updated_at=now)
                )
            updated = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
        return _task(updated)

    def _transition(
        self,
        conn: Connection,
        row: Row[Any],
        target: TaskState,
        now: float,
        reason: str,
    ) -> None:
        source = TaskState(row.state)
        check_transition(source, target)
        values: dict[str, Any] = {"state": target.value, "updated_at": now}
        if target in TERMINAL:
            values["finished_at"] = now
            values["error"] = reason if target != TaskState.SUCCEEDED else None
            values["error_kind"] = target.value
        conn.execute(tasks.update().where(tasks.c.id == row.id).values(**values))
        conn.execute(
            events.insert().values(
                state_event(
                    row.id, row.attempts, now, target.value, source.value, reason
                )
            )
        )

    def retry_task(self, task_id: str, now: float, attempts: int) -> TaskRecord:
        with self._write() as conn:
            row = conn.execute(
                self._locked(sa.select(tasks).where(tasks.c.id == task_id))
            ).first()
            if row is None:
                raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
            if row.state != TaskState.DEAD.value:
                raise RequestRefused(
                    f"task {task_id} is {row.state}; only dead tasks are retried "
                    "(submit a new task to run it again)",
                    task_id=task_id,
                )
            check_transition(TaskState.DEAD, TaskState.QUEUED)
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id)
                .values(
                    state=TaskState.QUEUED.value,
                    lane=row.run_class,
                    not_before=now,
                    updated_at=now,
                    finished_at=None,
                    max_attempts=row.attempts + attempts,
                )
            )
            conn.execute(
                events.insert().values(
                    state_event(
                        task_id,
                        row.attempts,
                        now,
                        "queued",
                        "dead",
                        "retried by an operator",
                    )
                )
            )
            updated = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
        return _task(updated)

    def state_counts(self) -> dict[str, int]:
        query = sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)
        with self._read() as conn:
            return {state: count for state, count in conn.execute(query)}

    # leases

    def lease(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        rules: Rules | None = None,
    ) -> list[Lease]:
        if limit <= 0:
            return []
        rules = rules or Rules()
        expires = now + lease_seconds
        with self._write() as conn:
            self._serialize_leases(conn)
            self._promote_due(conn, now)
            snapshot = self._snapshot(conn, limit, now, rules)
            chosen = plan(snapshot, rules.policy, limit)
            if not chosen.chosen:
                return []
            claimed = self._claim(
                conn, [c.task_id for c in chosen.chosen], owner, now, expires
            )
            self._save_fairness(conn, snapshot, chosen)
        order = {c.task_id: i for i, c in enumerate(chosen.chosen)}
        claimed.sort(key=lambda t: order[t.id])
        return [
            Lease(
                task=t,
                epoch=t.lease_epoch,
                attempt=t.attempts,
                owner=owner,
                expires_at=expires,
            )
            for t in claimed
        ]

    def _serialize_leases(self, conn: Connection) -> None:
        """Make concurrent leases plan one after the other; SQLite's single
        writer already does."""

    def _promote_due(self, conn: Connection, now: float) -> None:
        """Deferred tasks whose time has come join their run class's lane."""
        conn.execute(q.promote_due, {"now": now})

    def _snapshot(
        self, conn: Connection, limit: int, now: float, rules: Rules
    ) -> Snapshot:
        by_tenant, by_service = self._running_counts(conn)
        room = {
            service: max(0, cap - by_service.get(service, 0))
            for service, cap in rules.service_limits.items()
        }
        heads: dict[str, dict[str, list[Candidate]]] = {}
        for lane in LANES:
            heads[lane] = {
                tenant: self._heads(conn, lane, tenant, limit, room)
                for tenant in self._active_tenants(conn, lane)
            }
        active = {t for lane in heads.values() for t in lane}
        if not active:
            return Snapshot(heads=heads)
        shared = self._state_values(conn)
        return Snapshot(
            heads=heads,
            finish_tags=self._finish_tags(conn, active),
            virtual_time={lane: shared.get(f"vtime:{lane}", 0.0) for lane in LANES},
            batch_credit=shared.get("batch_credit", 0.0),
            shared_state=shared,
            running_by_tenant=by_tenant,
            running_by_service=by_service,
            tenant_limits={
                t: m for t in active if (m := rules.max_running(t)) is not None
            },
            service_limits=dict(rules.service_limits),
            cpu_blocked=self._cpu_blocked(conn, active, now, rules),
        )

    def _active_tenants(self, conn: Connection, lane: str) -> list[str]:
        # A loose index scan: one index probe per distinct tenant, however
        # many tasks each tenant has queued.
        return [row[0] for row in conn.execute(q.active_tenants, {"lane": lane})]

    def _heads(
        self,
        conn: Connection,
        lane: str,
        tenant: str,
        limit: int,
        room: dict[str, int],
    ) -> list[Candidate]:
        """The tenant's best ``limit`` tasks in the lane that a lease could take.

        Tasks of a service with a concurrency limit are read separately, no
        more than the service has room for: otherwise a run of tasks of a full
        service would hide the tenant's tasks behind them from the planner.
        """
        params = {"lane": lane, "tenant": tenant, "limit": limit}
        heads, heads_except, heads_of_service = self._heads_statements
        if not room:
            rows = list(conn.execute(heads, params))
        else:
            rows = list(conn.execute(heads_except, {**params, "services": list(room)}))
            for service, free in room.items():
                if free > 0:
                    rows += conn.execute(
                        heads_of_service,
                        {**params, "service": service, "limit": min(free, limit)},
                    )
            rows.sort(key=lambda r: (r.rank_at, r.id))
            rows = rows[:limit]
        return [Candidate(r.id, tenant, r.service, r.rank_at) for r in rows]

    def _running_counts(
        self, conn: Connection
    ) -> tuple[dict[str, int], dict[str, int]]:
        by_tenant: dict[str, int] = {}
        by_service: dict[str, int] = {}
        for tenant, service, count in conn.execute(q.running_counts):
            by_tenant[tenant] = by_tenant.get(tenant, 0) + count
            by_service[service] = by_service.get(service, 0) + count
        return by_tenant, by_service

    def _finish_tags(
        self, conn: Connection, tenants: set[str]
    ) -> dict[tuple[str, str], float]:
        rows = conn.execute(q.finish_tags, {"tenants": sorted(tenants)})
        return {(r.lane, r.tenant): r.finish_tag for r in rows}

    def _state_values(self, conn: Connection) -> dict[str, float]:
        return {r.key: r.value for r in conn.execute(q.state_values)}

    def cpu_used(self, since: float) -> dict[str, float]:
        """CPU seconds of attempts that ended since ``since``, per tenant."""
        with self._read() as conn:
            return self._cpu_used(conn, since)

    def _cpu_used(self, conn: Connection, since: float) -> dict[str, float]:
        rows = conn.execute(q.cpu_used, {"since": since})
        return {tenant: used or 0.0 for tenant, used in rows}

    def _cpu_blocked(
        self, conn: Connection, tenants: set[str], now: float, rules: Rules
    ) -> frozenset[str]:
        if not rules.has_cpu_quotas:
            return frozenset()
        used = self._cpu_used(conn, now - rules.cpu_window)
        return frozenset(
            t
            for t in tenants
            if (quota := rules.cpu_quota(t)) is not None and used.get(t, 0.0) >= quota
        )

    def _claim(
        self,
        conn: Connection,
        ids: list[str],
        owner: str,
        now: float,
        expires: float,
    ) -> list[TaskRecord]:
        params = {"ids": ids, "owner": owner, "expires": expires, "now": now}
        claimed = [_task(row) for row in conn.execute(q.claim, params)]
        if claimed:
            conn.execute(
                q.insert_events,
                [
                    state_event(t.id, t.attempts, now, "leased", "queued", owner)
                    for t in claimed
                ],
            )
        return claimed

    def _save_fairness(
        self, conn: Connection, snapshot: Snapshot, chosen: Plan
    ) -> None:
        tags = [
            {"b_lane": lane, "b_tenant": tenant, "b_tag": tag}
            for (lane, tenant), tag in chosen.finish_tags.items()
            if snapshot.finish_tags.get((lane, tenant)) != tag
        ]
        for row in tags:
            if conn.execute(q.update_tag, row).rowcount == 0:
                conn.execute(
                    q.insert_tag,
                    {
                        "lane": row["b_lane"],
                        "tenant": row["b_tenant"],
                        "finish_tag": row["b_tag"],
                    },
                )
        values = {f"vtime:{lane}": v for lane, v in chosen.virtual_time.items()}
        values["batch_credit"] = chosen.batch_credit
        for key, value in values.items():
            if snapshot.shared_state.get(key) == value:
                continue
            if key not in snapshot.shared_state:
                conn.execute(q.insert_state_value, {"key": key, "value": value})
            else:
                conn.execute(q.update_state_value, {"b_key": key, "b_value": value})

    def renew(
        self,
        owner: str,
        held: Sequence[tuple[str, int]],
        now: float,
        lease_seconds: float,
    ) -> Renewal:
        if not held:
            return Renewal(frozenset(), frozenset())
        wanted = dict(held)
        with self._write() as conn:
            rows = conn.execute(
                self._locked(
                    sa.select(
                        tasks.c.id,
                        tasks.c.lease_epoch,
                        tasks.c.lease_owner,
                        tasks.c.state,
                        tasks.c.cancel_requested,
                    )
                    .where(tasks.c.id.in_(list(wanted)))
                    .order_by(tasks.c.id)
                )
            ).all()
            current = [
                r
                for r in rows
                if r.lease_epoch == wanted[r.id]
                and r.lease_owner == owner
                and r.state in _HELD
            ]
            if current:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id.in_([r.id for r in current]))
                    .values(lease_expires_at=now + lease_seconds)
                )
        kept = {r.id for r in current}
        return Renewal(
            lost=frozenset(set(wanted) - kept),
            cancel_requested=frozenset(r.id for r in current if r.cancel_requested),
        )

    def apply(self, writes: Sequence[AttemptWrite]) -> list[RefusedWrite]:
        if not writes:
            return []
        with self._write() as conn:
            ids = list({w.task_id for w in writes})
            current = {
                r.id: (TaskState(r.state), r.lease_epoch)
                for r in conn.execute(self._fences_statement, {"ids": ids})
            }
            batch = WriteBatch()
            refused = [
                refusal
                for write in writes
                if (refusal := batch.add(write, current)) is not None
            ]
            batch.execute(conn)
        return refused

    def next_ready_at(self) -> float | None:
        with self._read() as conn:
            return conn.execute(q.next_due).scalar()

    def rescue(
        self, now: float, foreign_owners_too: bool = False, owner: str = ""
    ) -> list[str]:
        held = tasks.c.state.in_(_HELD)
        expired = tasks.c.lease_expires_at < now
        if foreign_owners_too:
            expired = sa.or_(expired, tasks.c.lease_owner != owner)
        rescued: list[str] = []
        with self._write() as conn:
            rows = conn.execute(
                self._locked(sa.select(tasks).where(held, expired), skip_locked=True)
            ).all()
            for row in rows:
                rescued.append(row.id)
                self._rescue_one(conn, row, now)
        if rescued:
            log.warning(
                "expired leases rescued",
                extra={"action": "leases_rescued", "count": len(rescued)},
            )
        return rescued

    def _rescue_one(self, conn: Connection, row: Row[Any], now: float) -> None:
        if row.cancel_requested:
            target, reason = TaskState.CANCELLED, "cancelled; its worker was lost"
        elif row.attempts >= row.max_attempts:
            # As for any retryable failure (queue.retry): dead only for a task
            # that was allowed retries and used them all.
            target = TaskState.DEAD if row.max_attempts > 1 else TaskState.FAILED
            reason = f"worker lost; all {row.max_attempts} attempts used"
        else:
            target, reason = TaskState.QUEUED, f"worker {row.lease_owner} lost"
        check_transition(TaskState(row.state), target)
        values: dict[str, Any] = {
            "state": target.value,
            "updated_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
            "lease_epoch": row.lease_epoch + 1,
            "lane": row.run_class,
            "not_before": now,
        }
        if target in TERMINAL:
            values.update(finished_at=now, error=reason, error_kind="lost")
        conn.execute(tasks.update().where(tasks.c.id == row.id).values(**values))
        conn.execute(
            attempts.update()
            .where(
                attempts.c.task_id == row.id,
                attempts.c.number == row.attempts,
                attempts.c.ended_at.is_(None),
            )
            .values(ended_at=now, outcome="lost", error=reason)
        )
        conn.execute(
            events.insert().values(
                state_event(
                    row.id,
                    row.attempts,
                    now,
                    target.value,
                    row.state,
                    reason,
                    outcome="lost",
                )
            )
        )

    def attempts(self, task_id: str) -> list[AttemptRecord]:
        query = (
            sa.select(attempts)
            .where(attempts.c.task_id == task_id)
            .order_by(attempts.c.number)
        )
        with self._read() as conn:
            return [AttemptRecord(**row._mapping) for row in conn.execute(query)]

    def provenance_records(self, task_id: str) -> list[dict[str, Any]]:
        """The task's provenance records, one per attempt that has one, in order."""
        query = (
            sa.select(provenance)
            .where(provenance.c.task_id == task_id)
            .order_by(provenance.c.attempt)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        query = (
            sa.select(events)
            .where(events.c.task_id == task_id, events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_event(r) for r in conn.execute(query)]

    def events_since(self, after: int, limit: int = 1000) -> list[Event]:
        query = (
            sa.select(events)
            .where(events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_event(r) for r in conn.execute(query)]

    def last_event_id(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0

    # queue statistics

    def queue_stats(
        self, now: float, rules: Rules, heads: int | None = None
    ) -> QueueStats:
        queued = tasks.c.state == q.QUEUED
        depth_rows = (
            sa.select(
                tasks.c.lane,
                tasks.c.tenant,
                sa.func.count(),
                sa.func.min(tasks.c.not_before),
            )
            .where(queued)
            .group_by(tasks.c.lane, tasks.c.tenant)
        )
        # Ready work as the next lease sees it: deferred tasks that are due
        # join their run class's lane first.
        lane = sa.case(
            (tasks.c.lane == "deferred", tasks.c.run_class), else_=tasks.c.lane
        ).label("lane")
        ranked = (
            sa.select(
                tasks.c.tenant,
                lane,
                tasks.c.service,
                sa.func.row_number()
                .over(
                    partition_by=(tasks.c.tenant, lane),
                    order_by=(tasks.c.rank_at, tasks.c.id),
                )
                .label("n"),
            )
            .where(
                queued,
                sa.or_(tasks.c.lane != "deferred", tasks.c.not_before <= now),
            )
            .subquery()
        )
        ready_rows = sa.select(ranked.c.tenant, ranked.c.lane, ranked.c.service)
        if heads is not None:
            ready_rows = ready_rows.where(ranked.c.n <= heads)
        ready_rows = ready_rows.distinct()
        with self._read(snapshot=True) as conn:
            found = conn.execute(depth_rows).all()
            ready: dict[str, dict[str, set[str]]] = {}
            for tenant, ready_lane, service in conn.execute(ready_rows):
                ready.setdefault(tenant, {}).setdefault(ready_lane, set()).add(service)
            by_tenant, by_service = self._running_counts(conn)
            cpu = self._cpu_used(conn, now - rules.cpu_window)
        order = {name: i for i, name in enumerate((*LANES, "deferred"))}
        depths = sorted(
            (
                Depth(row_lane, tenant, count, max(0.0, now - oldest))
                for row_lane, tenant, count, oldest in found
            ),
            key=lambda d: (order.get(d.lane, len(order)), d.tenant),
        )
        queued_by_tenant: dict[str, int] = {}
        for d in depths:
            queued_by_tenant[d.tenant] = queued_by_tenant.get(d.tenant, 0) + d.depth
        named = set(rules.tenant_max_running) | set(rules.tenant_cpu_seconds)
        everyone = sorted(
            set(queued_by_tenant)
            | set(by_tenant)
            | {t for t, u in cpu.items() if u}
            | named
        )
        return QueueStats(
            at=now,
            cpu_window=rules.cpu_window,
            depths=depths,
            tenants=[
                TenantUse(
                    tenant=t,
                    queued=queued_by_tenant.get(t, 0),
                    running=by_tenant.get(t, 0),
                    max_running=rules.max_running(t),
                    cpu_used=cpu.get(t, 0.0),
                    cpu_quota=rules.cpu_quota(t),
                )
                for t in everyone
            ],
            running_by_service=by_service,
            service_limits=dict(rules.service_limits),
            waiting=waiting_reasons(ready, by_tenant, by_service, cpu, rules),
            ready_tenants=sorted(ready),
        )


def _new_task_values(task: NewTask) -> dict[str, Any]:
    return {
        **task.__dict__,
        "state": TaskState.QUEUED.value,
        "updated_at": task.created_at,
        "attempts": 0,
        "lease_epoch": 0,
        "cancel_requested": False,
    }


def _record_of_new(values: dict[str, Any]) -> TaskRecord:
    """The record a just-inserted row reads back as, without reading it."""
    unset = dict.fromkeys(c.name for c in tasks.c if c.name not in values)
    return _task_from({**unset, **values})


def _service(row: Row[Any]) -> ServiceRecord:
    return ServiceRecord(
        name=row.name,
        version=row.version,
        digest=row.digest,
        path=row.path,
        manifest=json.loads(row.manifest),
        registered_at=row.registered_at,
    )


def _task(row: Row[Any]) -> TaskRecord:
    return _task_from(dict(row._mapping))


def _task_from(values: dict[str, Any]) -> TaskRecord:
    values["state"] = TaskState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return TaskRecord(**values)


def _event(r: Row[Any]) -> Event:
    return Event(
        id=r.id,
        task_id=r.task_id,
        attempt=r.attempt,
        at=r.at,
        kind=r.kind,
        data=json.loads(r.data),
    )


def _unavailable(exc: Exception) -> StoreUnavailable:
    cause = getattr(exc, "orig", None) or exc
    return StoreUnavailable(f"the store is unavailable: {cause}")
