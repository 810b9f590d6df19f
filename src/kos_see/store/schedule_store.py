"""Cron schedules in the store: the ``schedules`` table of ``schema.py``.

A schedule row holds its next nominal fire time (``next_fire_at``, UTC
seconds). A scheduler advances it with :meth:`ScheduleStore.claim_fire`, a
compare-and-set on that column, so that of several schedulers that saw the
same fire due exactly one moves the schedule on. (The tasks themselves are
deduplicated by their idempotency key; see ``kos_see.queue.scheduler``.)

It works on the SQL store's engine and transaction helpers, so its writes
queue on the same in-process write lock as every other write of the store.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from kos_see.errors import RequestRefused, StoreError
from kos_see.store.schema import schedules


class ScheduleNotFound(RequestRefused):
    """No such schedule."""

    code = "unknown_schedule"


class ScheduleExists(RequestRefused):
    """A schedule of that name exists already."""

    code = "schedule_exists"


@dataclass(frozen=True)
class ScheduleRecord:
    name: str
    cron: str
    timezone: str
    service: str  # NAME or NAME@VERSION, resolved at each fire
    input: str  # canonical JSON text
    tenant: str
    principal: str
    priority: int | None
    queue_class: str | None
    misfire: str  # catch_up_once or skip
    paused: bool
    next_fire_at: float | None  # the next nominal fire time; None: never again
    last_fire_at: float | None  # the latest fire time that made a task
    created_at: float

    def input_value(self) -> Any:
        return json.loads(self.input)

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["input"] = self.input_value()
        return document


Records = list[ScheduleRecord]

# Built once: the scheduler asks this every tick.
_DUE = (
    sa.select(schedules)
    .where(
        schedules.c.paused.is_(False),
        schedules.c.next_fire_at.is_not(None),
        schedules.c.next_fire_at <= sa.bindparam("now"),
    )
    .order_by(schedules.c.next_fire_at, schedules.c.name)
    .limit(sa.bindparam("limit"))
)


class ScheduleStore:
    def __init__(self, store: Any) -> None:
        if not all(hasattr(store, a) for a in ("engine", "_write", "_read")):
            raise StoreError(
                f"schedules need the SQL store; {type(store).__name__} has no "
                "engine and transactions to keep them in"
            )
        self.store = store

    def add(self, record: ScheduleRecord) -> ScheduleRecord:
        try:
            with self.store._write() as conn:
                conn.execute(schedules.insert().values(**asdict(record)))
        except (sa.exc.IntegrityError, sqlite3.IntegrityError) as exc:
            raise ScheduleExists(
                f"a schedule named {record.name!r} exists already; remove it "
                "first or choose another name",
                schedule=record.name,
            ) from exc
        return record

    def get(self, name: str) -> ScheduleRecord | None:
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(schedules).where(schedules.c.name == name)
            ).first()
        return None if row is None else _record(row)

    def require(self, name: str) -> ScheduleRecord:
        record = self.get(name)
        if record is None:
            raise _not_found(name)
        return record

    def list(self) -> Records:
        with self.store._read() as conn:
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.name))
            return [_record(row) for row in rows]

    def due(self, now: float, limit: int = 100) -> Records:
        """Schedules not paused whose next fire time is at or before ``now``,
        the most overdue first."""
        with self.store._read() as conn:
            rows = conn.execute(_DUE, {"now": now, "limit": limit})
            return [_record(row) for row in rows]

    def pause(self, name: str) -> ScheduleRecord:
        return self._update(name, paused=True)

    def resume(self, name: str, next_fire_at: float | None) -> ScheduleRecord:
        """Unpause, with the next fire time counted from now: fire times that
        passed while it was paused are not made up for."""
        return self._update(name, paused=False, next_fire_at=next_fire_at)

    def remove(self, name: str) -> ScheduleRecord:
        with self.store._write() as conn:
            row = conn.execute(
                sa.select(schedules).where(schedules.c.name == name)
            ).first()
            if row is None:
                raise _not_found(name)
            conn.execute(schedules.delete().where(schedules.c.name == name))
        return _record(row)

    def claim_fire(
        self,
        name: str,
        expected_next: float | None,
        new_next: float | None,
        last: float | None,
    ) -> bool:
        """Move the schedule's next fire time from ``expected_next`` to
        ``new_next`` (and its last fire time to ``last``), only if it is still
        ``expected_next``: False when another scheduler moved it first, or the
        schedule is gone."""
        current = (
            schedules.c.next_fire_at.is_(None)
            if expected_next is None
            else schedules.c.next_fire_at == expected_next
        )
        with self.store._write() as conn:
            done = conn.execute(
                schedules.update()
                .where(schedules.c.name == name, current)
                .values(next_fire_at=new_next, last_fire_at=last)
            )
            return done.rowcount == 1

    def _update(self, name: str, **values: Any) -> ScheduleRecord:
        with self.store._write() as conn:
            done = conn.execute(
                schedules.update().where(schedules.c.name == name).values(**values)
            )
            if done.rowcount != 1:
                raise _not_found(name)
            row = conn.execute(
                sa.select(schedules).where(schedules.c.name == name)
            ).one()
        return _record(row)


def _not_found(name: str) -> ScheduleNotFound:
    return ScheduleNotFound(f"no schedule {name!r}", schedule=name)


def _record(row: Row[Any]) -> ScheduleRecord:
    values = dict(row._mapping)
    values["paused"] = bool(values["paused"])
    return ScheduleRecord(**values)
