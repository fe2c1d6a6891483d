"""The baseline: the schema of the SQLite store's seven sqlite-utils migrations (m001 to m007), on either backend.

Revision ID: r001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "r001"
down_revision = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "runs", _id(),
        sa.Column("name", sa.Text), sa.Column("status", sa.Text, nullable=False),
        sa.Column("backbone", sa.Text, nullable=False), sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("data_dir", sa.Text), sa.Column("params", sa.Text), sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text), sa.Column("started_at", sa.Text), sa.Column("finished_at", sa.Text),
        sa.Column("run_dir", sa.Text), sa.Column("pid", sa.Integer), sa.Column("error", sa.Text),
        sa.Column("cancel_requested", sa.Integer), sa.Column("epochs_done", sa.Integer),
        sa.Column("best_metric", sa.Float), sa.Column("best_metric_name", sa.Text),
        sa.Column("test_macro_f1", sa.Float), sa.Column("test_accuracy", sa.Float), sa.Column("modality", sa.Text))
    op.create_index("idx_runs_status", "runs", ["status"])
    op.create_index("idx_runs_dataset", "runs", ["dataset"])
    op.create_table(
        "metrics", _id(), sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("epoch", sa.Integer), sa.Column("step", sa.Integer), sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.Float), sa.Column("time", sa.Float))
    op.create_index("idx_metrics_run_id_id", "metrics", ["run_id", "id"])
    op.create_table(
        "users", _id(), sa.Column("name", sa.Text, nullable=False), sa.Column("role", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False), sa.Column("created_at", sa.Text),
        sa.Column("must_change_password", sa.Integer),
        sa.Column("disabled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("session_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("source", sa.Text, nullable=False, server_default="local"), sa.Column("name_key", sa.Text),
        sa.Column("credential_version", sa.Integer, nullable=False, server_default="0"))
    op.create_index("idx_users_name", "users", ["name"], unique=True)
    op.create_index("idx_users_name_key", "users", ["name_key"], unique=True)
    op.create_table(
        "api_tokens", _id(), sa.Column("user_id", ID, sa.ForeignKey("users.id")), sa.Column("label", sa.Text),
        sa.Column("token_hash", sa.Text), sa.Column("created_at", sa.Text), sa.Column("last_used_at", sa.Text),
        sa.Column("credential_version", sa.Integer, nullable=False, server_default="0"))
    op.create_index("idx_api_tokens_token_hash", "api_tokens", ["token_hash"], unique=True)
    op.create_table(
        "audit", _id(), sa.Column("time", sa.Text), sa.Column("user", sa.Text), sa.Column("action", sa.Text),
        sa.Column("run_id", ID), sa.Column("detail", sa.Text))
    op.create_index("idx_audit_action", "audit", ["action"])
    op.create_table(
        "defaults", sa.Column("modality", sa.Text, primary_key=True),
        sa.Column("run_id", ID, sa.ForeignKey("runs.id")), sa.Column("set_at", sa.Text),
        sa.Column("set_by", sa.Text), sa.Column("reason", sa.Text))
    op.create_table(
        "modality_settings", sa.Column("modality", sa.Text, primary_key=True),
        sa.Column("auto_promote", sa.Integer), sa.Column("floors", sa.Text), sa.Column("updated_at", sa.Text),
        sa.Column("updated_by", sa.Text), sa.Column("operating_sensitivity", sa.Float))
    op.create_table(
        "acceptance_sets", _id(), sa.Column("modality", sa.Text, nullable=False), sa.Column("name", sa.Text),
        sa.Column("source", sa.Text, nullable=False), sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("dataset_params", sa.Text), sa.Column("data_dir", sa.Text), sa.Column("share", sa.Float),
        sa.Column("seed", sa.Integer), sa.Column("items", sa.Text, nullable=False), sa.Column("created_at", sa.Text),
        sa.Column("created_by", sa.Text))
    op.create_index("idx_acceptance_sets_modality", "acceptance_sets", ["modality"])
    op.create_table(
        "acceptance_results", sa.Column("run_id", ID, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("set_id", ID, sa.ForeignKey("acceptance_sets.id"), primary_key=True),
        sa.Column("metrics", sa.Text), sa.Column("evaluated_at", sa.Text), sa.Column("evaluated_by", sa.Text))
    op.create_table(
        "validations", _id(), sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("dataset", sa.Text, nullable=False), sa.Column("data_dir", sa.Text),
        sa.Column("dataset_params", sa.Text), sa.Column("sites", sa.Text), sa.Column("n", sa.Integer),
        sa.Column("metrics", sa.Text, nullable=False), sa.Column("report", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False), sa.Column("created_by", sa.Text))
    op.create_index("idx_validations_run_id", "validations", ["run_id"])


def downgrade() -> None:
    for table in ("validations", "acceptance_results", "acceptance_sets", "modality_settings", "defaults", "audit",
                  "api_tokens", "users", "metrics", "runs"):
        op.drop_table(table)
