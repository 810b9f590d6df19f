"""Principals, nonces, the audit log and its checkpoints; isolation columns.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("secrets", sa.Text))
        batch.add_column(sa.Column("request_digest", sa.String(80)))
        batch.add_column(sa.Column("runner", sa.String(32)))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("isolation", sa.String(32)))
        batch.add_column(sa.Column("killed_by", sa.String(16)))
    op.create_table(
        "principals",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(80), nullable=False, unique=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_table(
        "nonces",
        sa.Column("principal", sa.String(128), primary_key=True),
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_index("ix_nonces_seen", "nonces", ["seen_at"])
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(32)),
        sa.Column("principal", sa.String(128)),
        sa.Column("tenant", sa.String(64)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(80), nullable=False),
        sa.Column("hash", sa.String(80), nullable=False),
    )
    op.create_index("ix_audit_task", "audit_entries", ["task_id", "seq"])
    op.create_index("ix_audit_at", "audit_entries", ["at"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(80), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("key_id", sa.String(80), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_at", "audit_entries")
    op.drop_index("ix_audit_task", "audit_entries")
    op.drop_table("audit_entries")
    op.drop_index("ix_nonces_seen", "nonces")
    op.drop_table("nonces")
    op.drop_table("principals")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("killed_by")
        batch.drop_column("isolation")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("runner")
        batch.drop_column("request_digest")
        batch.drop_column("secrets")
