"""The store on PostgreSQL, for many workers on many hosts.

The same statements, schema and ordering as the SQLite store (``sql.py``);
what changes is how concurrent writers are kept apart, since here several
processes write at once:

- a lease plans under a transaction-level advisory lock, so that the queue
  manager's shared state (virtual times, finish tags, batch credit) is read
  and advanced by one lease at a time and the order is exactly the embedded
  one; its candidates are read ``FOR UPDATE SKIP LOCKED`` on the partial
  index of queued rows (``ix_tasks_ready``), so a row another transaction
  holds (a cancel, a rescue) is passed over instead of waited for;
- every write that reads a task before changing it (attempt writes' fences,
  renewals, cancel, retry) locks the task rows first, in id order, so that a
  rescuer and a returning worker can never both act on one epoch;
- a rescuer reads expired leases ``FOR UPDATE SKIP LOCKED``: two rescuers at
  once each take different rows, and none is requeued twice;
- ``notify`` sends a wake-up on a LISTEN/NOTIFY channel (``events/pg_wakeup``).

Known shortcoming: leases plan one at a time (the advisory lock), which keeps
the order exact but caps leasing at one planner's speed, a few milliseconds
per lease of many tasks; it goes away with fairness state kept per lane and
planned under that lane's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from kos_see.models import NewTask, TaskRecord
from kos_see.store import statements as q
from kos_see.store.schema import tasks
from kos_see.store.sql import SqlStore, _task, _unavailable

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the lease planner: "kos-see lease" as 8 bytes.
LEASE_LOCK_KEY = int.from_bytes(b"kslease\0", "big") >> 1

WAKE_CHANNEL = "kos_see_wake"

# How long a session may sit inside an open transaction doing nothing.
IDLE_MS = 3000


def _skip_locked(statement: sa.Select) -> sa.Select:
    return statement.with_for_update(skip_locked=True, of=tasks)


class PostgresStore(SqlStore):
    _heads_statements = (
        _skip_locked(q.heads),
        _skip_locked(q.heads_except),
        _skip_locked(q.heads_of_service),
    )
    _fences_statement = q.fences.order_by(tasks.c.id).with_for_update(of=tasks)

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, use_driver=False)

    def _locked(self, query: sa.Select, skip_locked: bool = False) -> sa.Select:
        return query.with_for_update(skip_locked=skip_locked, of=tasks)

    def _serialize_leases(self, conn: Connection) -> None:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LEASE_LOCK_KEY)))

    @contextmanager
    def _sqlalchemy_write(self) -> Iterator[Connection]:
        with _server_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _sqlalchemy_read(self) -> Iterator[Connection]:
        with _server_errors(), self.engine.connect() as conn:
            yield conn

    def create_task(self, task: NewTask) -> tuple[TaskRecord, bool]:
        """As the embedded store's; two submits of one idempotency key at the
        same moment (two schedulers, a client's retry) both get the one task:
        the loser of the unique index's race reads the winner's row."""
        try:
            return super().create_task(task)
        except sa.exc.IntegrityError:
            if task.idempotency_key is None:
                raise
            with self._read() as conn:
                row = conn.execute(
                    q.task_by_key, {"tenant": task.tenant, "key": task.idempotency_key}
                ).first()
            if row is None:
                raise
            return _task(row), False

    def notify(self, message: str) -> None:
        """Wake every process listening on this database (delivered on commit)."""
        with self._sqlalchemy_write() as conn:
            conn.execute(sa.select(sa.func.pg_notify(WAKE_CHANNEL, message)))


def postgres_engine(url: str) -> Engine:
    """A SQLAlchemy engine on psycopg 3 for ``postgresql://`` URLs."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        url = f"postgresql+psycopg://{rest}"
    return sa.create_engine(
        url,
        # A connection broken by a server restart is noticed before use,
        # not in the middle of a transaction.
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=8,
        connect_args={
            "connect_timeout": 5,
            # A worker paused (SIGSTOP, a VM freeze) inside a transaction would
            # keep its row and advisory locks, and every other worker's lease
            # and rescue would wait on them. The server ends such a session
            # instead; the paused worker finds its connection gone on waking.
            "options": f"-c idle_in_transaction_session_timeout={IDLE_MS}",
        },
    )


@contextmanager
def _server_errors() -> Iterator[None]:
    """A lost or refused connection becomes StoreUnavailable (callers back off
    and retry); any other database error stays what it is."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise _unavailable(exc) from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise _unavailable(exc) from exc
        raise
