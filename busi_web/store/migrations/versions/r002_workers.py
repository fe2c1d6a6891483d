"""Trainer workers on other hosts: who holds a running run and its heartbeat, and the workers themselves.

Revision ID: r002
Revises: r001
"""

import sqlalchemy as sa
from alembic import op

revision = "r002"
down_revision = "r001"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("worker", sa.Text))
        batch.add_column(sa.Column("heartbeat_at", sa.Float))
    op.create_table(
        "workers", sa.Column("name", sa.Text, primary_key=True), sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer), sa.Column("slots", sa.Integer), sa.Column("started_at", sa.Text),
        sa.Column("seen_at", sa.Float), sa.Column("state", sa.Text))


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("worker")
