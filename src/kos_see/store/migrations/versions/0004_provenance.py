"""Dependencies fetched per attempt, outputs per task, provenance records.

Revision ID: 0004
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("dependencies", sa.Text))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("outputs", sa.Text))
    op.create_table(
        "provenance",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("statement_digest", sa.String(80), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provenance")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("outputs")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("dependencies")
