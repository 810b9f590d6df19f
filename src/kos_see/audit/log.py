"""Appending to the audit log: cheap on the request path, chained at flush.

``record`` only puts an entry in memory; ``flush`` writes everything waiting
in one store transaction, which reads the chain's head, hashes the entries
onto it and inserts them. One transaction per batch instead of one per
request keeps auditing off the submit path's critical cost, and taking the
head inside the store's write transaction keeps the chain whole when several
processes (a serving engine and CLI commands) share one home.

A serving engine flushes from a background thread every ``flush_interval``.
A process without that thread (a CLI command, a client) writes each entry at
once, so that its request precedes in the chain what a serving engine later
records of the same task; it pays one transaction per request for that.

Known shortcoming: in a serving engine, entries recorded less than
``flush_interval`` before the process is killed outright (SIGKILL, power
loss) are lost, while the tasks they describe exist; writing the entry in
the task's own insert transaction would close that gap, at the cost of a
store change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kos_see.audit.chain import GENESIS, body_text, entry_hash, sign_checkpoint
from kos_see.errors import StoreError
from kos_see.security.keys import SigningKey
from kos_see.store.schema import audit_checkpoints, audit_entries

log = logging.getLogger(__name__)

# A signed checkpoint at least this often, counted in entries; every flush
# of a closing process signs one too.
CHECKPOINT_EVERY = 1000
FLUSH_INTERVAL = 0.1
FLUSH_AT = 512
# A serving engine prunes entries past security.max_log_retention this often.
PRUNE_EVERY = 3600.0


@dataclass(frozen=True)
class Pending:
    at: float
    kind: str
    task_id: str | None
    principal: str | None
    tenant: str | None
    body: dict[str, Any]


class AuditLog:
    """The audit log of one store, signed with the engine's key."""

    def __init__(
        self,
        store: Any,
        engine_key: Callable[[], SigningKey],
        flush_interval: float = FLUSH_INTERVAL,
        checkpoint_every: int = CHECKPOINT_EVERY,
        retention: float | None = None,
        prune_every: float = PRUNE_EVERY,
    ) -> None:
        if not all(hasattr(store, a) for a in ("_write", "_read")):
            raise StoreError(
                f"the audit log needs the SQL store; {type(store).__name__} has none"
            )
        self.store = store
        self._engine_key = engine_key
        self._key: SigningKey | None = None
        self.flush_interval = flush_interval
        self.checkpoint_every = checkpoint_every
        self.retention = retention
        self.prune_every = prune_every
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = self._engine_key()
        return self._key

    # appending

    def record(
        self,
        kind: str,
        body: dict[str, Any],
        task_id: str | None = None,
        principal: str | None = None,
        tenant: str | None = None,
        at: float | None = None,
    ) -> None:
        entry = Pending(
            time.time() if at is None else at, kind, task_id, principal, tenant, body
        )
        with self._lock:
            self._pending.append(entry)
            many = len(self._pending) >= FLUSH_AT
        if self._thread is None:
            self.flush()
        elif many:
            self._wake.set()

    def flush(self, checkpoint: bool = False) -> int:
        """Write what waits; with ``checkpoint``, sign the head afterwards."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch and not checkpoint:
                return 0
            try:
                self._write(batch, checkpoint)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch  # kept for the next flush
                raise
            return len(batch)

    def _write(self, batch: list[Pending], checkpoint: bool) -> None:
        key = self.key if batch or checkpoint else None
        with self.store._write() as conn:
            _lock_chain(conn)
            seq, prev = head(conn)
            rows = []
            for entry in batch:
                seq += 1
                body = body_text(entry.body)
                digest = entry_hash(
                    seq,
                    entry.at,
                    entry.kind,
                    entry.task_id,
                    entry.principal,
                    entry.tenant,
                    body,
                    prev,
                )
                rows.append(
                    {
                        "seq": seq,
                        "at": entry.at,
                        "kind": entry.kind,
                        "task_id": entry.task_id,
                        "principal": entry.principal,
                        "tenant": entry.tenant,
                        "body": body,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            if rows:
                conn.execute(audit_entries.insert(), rows)
            signed_up_to = conn.exec_driver_sql(LAST_CHECKPOINT).scalar()
            due = seq - (signed_up_to or 0) >= self.checkpoint_every
            if seq > (signed_up_to or 0) and (checkpoint or due) and key is not None:
                point = sign_checkpoint(key, seq, prev, time.time())
                conn.execute(audit_checkpoints.insert().values(**point.__dict__))

    # the background flusher of a long-lived process

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="audit-flusher", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush(checkpoint=True)

    def _run(self) -> None:
        # The first prune comes at start, so an engine restarted often still
        # prunes.
        next_prune = time.monotonic()
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception(
                    "audit flush failed; entries kept for the next flush",
                    extra={"action": "audit_flush_failed"},
                )
            if self.retention is not None and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_every
                self._prune()

    def _prune(self) -> None:
        from kos_see.audit.verify import prune  # verify imports this module

        try:
            prune(self.store, self.key, self.retention or 0.0)
        except Exception:
            log.exception(
                "audit prune failed; the log was left as it was",
                extra={"action": "audit_prune_failed"},
            )


# Plain SQL without parameters, valid on every database the store runs on:
# run as text, these need no statement compiled per flush.
HEAD_ENTRY = "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1"
HEAD_CHECKPOINT = "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
LAST_CHECKPOINT = "SELECT max(seq) FROM audit_checkpoints"


# pg_advisory_xact_lock key of the chain's head: "kos-see audit" as 8 bytes.
CHAIN_LOCK_KEY = int.from_bytes(b"ksaudit\0", "big") >> 1


def _lock_chain(conn: Any) -> None:
    """Serialise appends to the chain across processes sharing a PostgreSQL
    store: each reads the head and links to it, so two at once would fork it.
    SQLite needs nothing more: its write transaction is exclusive already."""
    dialect = getattr(conn, "dialect", None)
    if dialect is not None and dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})")


def head(conn: Any) -> tuple[int, str]:
    """The chain's last position and hash: its newest entry, or after a
    prune that left none, its newest checkpoint."""
    row = conn.exec_driver_sql(HEAD_ENTRY).first()
    if row is not None:
        return int(row[0]), str(row[1])
    point = conn.exec_driver_sql(HEAD_CHECKPOINT).first()
    if point is not None:
        return int(point[0]), str(point[1])
    return 0, GENESIS
