"""Webhook subscriptions of tasks and every delivery attempt.

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callbacks",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_callbacks_due", "callbacks", ["state", "next_at"])
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("duration", sa.Float, nullable=False),
    )
    op.create_index("ix_callback_deliveries_task", "callback_deliveries", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_callback_deliveries_task", "callback_deliveries")
    op.drop_table("callback_deliveries")
    op.drop_index("ix_callbacks_due", "callbacks")
    op.drop_table("callbacks")
