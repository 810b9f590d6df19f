"""Tables of the store, as SQLAlchemy Core, shared by every SQL backend.

Times are float seconds since the epoch. JSON documents are stored as text,
so both SQLite and PostgreSQL hold them the same way. The migrations under
``migrations/`` create exactly these tables; ``SCHEMA_REVISION`` names the
newest migration, and a test keeps the two in step.
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_REVISION = "0005"

metadata = sa.MetaData()

services = sa.Table(
    "services",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(80), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(80), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("queue_class", sa.String(16), nullable=False),
    # Where a queued task waits: its run class, or "deferred" until not_before.
    sa.Column("lane", sa.String(16), nullable=False),
    sa.Column("run_class", sa.String(16), nullable=False),  # realtime or batch
    sa.Column("priority", sa.Integer, nullable=False),
    # Order within a tenant: created_at less priority times the aging interval,
    # so that each priority point is worth a fixed time of waiting.
    sa.Column("rank_at", sa.Float, nullable=False),
    sa.Column("schedule", sa.String(64)),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("input_digest", sa.String(80), nullable=False),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("timeout", sa.Float, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_epoch", sa.Integer, nullable=False, default=0),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("progress_done", sa.Float),
    sa.Column("progress_total", sa.Float),
    sa.Column("progress_message", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_kind", sa.String(32)),
    sa.Column("finished_at", sa.Float),
    # The secrets the manifest declares and the policy granted (JSON list).
    sa.Column("secrets", sa.Text),
    # sha256 of the signed request that made the task; None: unsigned.
    sa.Column("request_digest", sa.String(80)),
    # The runner chosen at submit: the manifest's, or "sandbox" when the
    # policy forces it for the tenant. None: the manifest's.
    sa.Column("runner", sa.String(32)),
    # Files the last attempt wrote under out/, stored in the vault: JSON of
    # path -> {digest, size}.
    sa.Column("outputs", sa.Text),
)

# Leasing reads only queued rows, by lane, tenant and rank, so the index holds
# only them: it stays small however many finished rows pile up.
sa.Index(
    "ix_tasks_ready",
    tasks.c.lane,
    tasks.c.tenant,
    tasks.c.rank_at,
    sqlite_where=tasks.c.state == "queued",
    postgresql_where=tasks.c.state == "queued",
)
sa.Index(
    "ix_tasks_idempotency",
    tasks.c.tenant,
    tasks.c.idempotency_key,
    unique=True,
    sqlite_where=tasks.c.idempotency_key.is_not(None),
    postgresql_where=tasks.c.idempotency_key.is_not(None),
)
sa.Index(
    "ix_tasks_leased",
    tasks.c.lease_expires_at,
    sqlite_where=tasks.c.state.in_(["leased", "running"]),
    postgresql_where=tasks.c.state.in_(["leased", "running"]),
)
# Deferred tasks (and retries waiting out their backoff) by due time.
sa.Index(
    "ix_tasks_due",
    tasks.c.lane,
    tasks.c.not_before,
    sqlite_where=sa.and_(tasks.c.state == "queued", tasks.c.lane == "deferred"),
    postgresql_where=sa.and_(tasks.c.state == "queued", tasks.c.lane == "deferred"),
)
sa.Index("ix_tasks_state_created", tasks.c.state, tasks.c.created_at)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("outcome", sa.String(16)),
    sa.Column("pid", sa.Integer),
    sa.Column("exit_code", sa.Integer),
    sa.Column("signal", sa.Integer),
    sa.Column("cpu_seconds", sa.Float),
    sa.Column("peak_rss_kb", sa.Integer),
    sa.Column("stdout", sa.Text),
    sa.Column("stderr", sa.Text),
    sa.Column("stdout_bytes", sa.Integer),
    sa.Column("stderr_bytes", sa.Integer),
    sa.Column("events_dropped", sa.Integer),
    sa.Column("error", sa.Text),
    # How the attempt was contained: "local" or "sandbox", and the cgroup
    # version when one limited it.
    sa.Column("isolation", sa.String(32)),
    # What ended the attempt from outside, if anything: timeout, memory,
    # cpu_time, file_size, cancel.
    sa.Column("killed_by", sa.String(16)),
    # The dependencies fetched before the process started, with their digests
    # and fetch times: a JSON list.
    sa.Column("dependencies", sa.Text),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)
sa.Index("ix_events_task", events.c.task_id, events.c.id)

# Fair share: each tenant's finish tag per lane (start-time fair queueing).
fair_share = sa.Table(
    "fair_share",
    metadata,
    sa.Column("lane", sa.String(16), primary_key=True),
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("finish_tag", sa.Float, nullable=False),
)

# Small shared scheduling state: each lane's virtual time, the batch credit.
queue_state = sa.Table(
    "queue_state",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("cron", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("service", sa.String(130), nullable=False),  # NAME or NAME@VERSION
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("priority", sa.Integer),
    sa.Column("queue_class", sa.String(16)),
    sa.Column("misfire", sa.String(16), nullable=False),  # catch_up_once or skip
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("next_fire_at", sa.Float),  # the next nominal fire time, UTC seconds
    sa.Column("last_fire_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Principals: identities that sign requests, each acting for one tenant.
principals = sa.Table(
    "principals",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(80), nullable=False, unique=True),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

# Nonces of accepted signed requests, kept for the replay window.
nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("principal", sa.String(128), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False),
)
sa.Index("ix_nonces_seen", nonces.c.seen_at)

# The audit log: append-only, each entry's hash covers the previous entry's.
audit_entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("task_id", sa.String(32)),
    sa.Column("principal", sa.String(128)),
    sa.Column("tenant", sa.String(64)),
    sa.Column("body", sa.Text, nullable=False),  # RFC 8785 canonical JSON
    sa.Column("prev_hash", sa.String(80), nullable=False),
    sa.Column("hash", sa.String(80), nullable=False),
)
sa.Index("ix_audit_task", audit_entries.c.task_id, audit_entries.c.seq)
sa.Index("ix_audit_at", audit_entries.c.at)

# Checkpoints: the engine's signature over the chain's hash at an entry.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(80), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(80), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
)

# One signed provenance record per attempt that ran: a DSSE envelope around an
# in-toto statement with a SLSA provenance predicate.
provenance = sa.Table(
    "provenance",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("statement_digest", sa.String(80), nullable=False),
    sa.Column("envelope", sa.Text, nullable=False),
)

# Webhook subscriptions: a task's callback URL and the secret its payloads are
# signed with (HMAC-SHA256). One per task; ``state`` is pending until the
# payload of the task's terminal state is delivered (or given up on: failed).
callbacks = sa.Table(
    "callbacks",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),  # when to try next
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_callbacks_due", callbacks.c.state, callbacks.c.next_at)

# Every delivery attempt of a callback, answered or not.
callback_deliveries = sa.Table(
    "callback_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("status", sa.Integer),  # the receiver's HTTP status; None: no answer
    sa.Column("error", sa.Text),
    sa.Column("duration", sa.Float, nullable=False),
)
sa.Index("ix_callback_deliveries_task", callback_deliveries.c.task_id)
