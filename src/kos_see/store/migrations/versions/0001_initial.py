"""Services, tasks, attempts, events, fair-share state and schedules.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_queued = sa.text("state = 'queued'")
_held = sa.text("state IN ('leased', 'running')")
_keyed = sa.text("idempotency_key IS NOT NULL")
_deferred = sa.text("state = 'queued' AND lane = 'deferred'")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("registered_at", sa.Float, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("queue_class", sa.String(16), nullable=False),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("run_class", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
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
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_epoch", sa.Integer, nullable=False),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("progress_done", sa.Float),
        sa.Column("progress_total", sa.Float),
        sa.Column("progress_message", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("finished_at", sa.Float),
    )
    op.create_index(
        "ix_tasks_ready",
        "tasks",
        ["lane", "tenant", "rank_at"],
        sqlite_where=_queued,
        postgresql_where=_queued,
    )
    op.create_index(
        "ix_tasks_idempotency",
        "tasks",
        ["tenant", "idempotency_key"],
        unique=True,
        sqlite_where=_keyed,
        postgresql_where=_keyed,
    )
    op.create_index(
        "ix_tasks_leased",
        "tasks",
        ["lease_expires_at"],
        sqlite_where=_held,
        postgresql_where=_held,
    )
    op.create_index(
        "ix_tasks_due",
        "tasks",
        ["lane", "not_before"],
        sqlite_where=_deferred,
        postgresql_where=_deferred,
    )
    op.create_index("ix_tasks_state_created", "tasks", ["state", "created_at"])
    op.create_table(
        "attempts",
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
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_events_task", "events", ["task_id", "id"])

    op.create_table(
        "fair_share",
        sa.Column("lane", sa.String(16), primary_key=True),
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("finish_tag", sa.Float, nullable=False),
    )
    op.create_table(
        "queue_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("service", sa.String(130), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("priority", sa.Integer),
        sa.Column("queue_class", sa.String(16)),
        sa.Column("misfire", sa.String(16), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_fire_at", sa.Float),
        sa.Column("last_fire_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "schedules",
        "queue_state",
        "fair_share",
        "events",
        "attempts",
        "tasks",
        "services",
    ):
        op.drop_table(table)
