"""The audit trail indexed by action and id: the newest row of some actions is found without a scan (the
serving processes ask for it at every diagnosis, to know whether what decides the answering model changed).

Revision ID: r003
Revises: r002
"""

from alembic import op

revision = "r003"
down_revision = "r002"


def upgrade() -> None:
    op.create_index("idx_audit_action_id", "audit", ["action", "id"])


def downgrade() -> None:
    op.drop_index("idx_audit_action_id", "audit")
