"""The store's tables as they are at the newest migration, for the queries (SQLAlchemy Core).

The migrations (:mod:`busi_web.store.migrations`) make the database match
these; ``tests/store`` checks that a migrated database of either kind has
every column here. Flags are integers (0 or 1) and JSON documents text, as
they were when the store was SQLite alone, so that a copied or upgraded
database needs no conversion. Ids are 64-bit on PostgreSQL (SQLite's are).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, MetaData, Table, Text

metadata = MetaData()

# SQLite makes "INTEGER PRIMARY KEY" the row id (64-bit, increasing); PostgreSQL gets a BIGINT identity.
ID = BigInteger().with_variant(Integer(), "sqlite")


def _id() -> Column:
    return Column("id", ID, primary_key=True, autoincrement=True)


runs = Table(
    "runs", metadata,
    _id(),
    Column("name", Text), Column("status", Text, nullable=False), Column("backbone", Text, nullable=False),
    Column("dataset", Text, nullable=False), Column("data_dir", Text), Column("params", Text),
    Column("created_at", Text, nullable=False), Column("created_by", Text), Column("started_at", Text),
    Column("finished_at", Text), Column("run_dir", Text), Column("pid", Integer), Column("error", Text),
    Column("cancel_requested", Integer), Column("epochs_done", Integer), Column("best_metric", Float),
    Column("best_metric_name", Text), Column("test_macro_f1", Float), Column("test_accuracy", Float),
    Column("modality", Text),
    # Which trainer worker holds the run while it is running, and when it last said so (seconds since the epoch).
    Column("worker", Text), Column("heartbeat_at", Float),
    Index("idx_runs_status", "status"), Index("idx_runs_dataset", "dataset"),
)

metrics = Table(
    "metrics", metadata,
    _id(),
    Column("run_id", ID, ForeignKey("runs.id"), nullable=False), Column("epoch", Integer), Column("step", Integer),
    Column("key", Text, nullable=False), Column("value", Float), Column("time", Float),
    Index("idx_metrics_run_id_id", "run_id", "id"),
)

users = Table(
    "users", metadata,
    _id(),
    Column("name", Text, nullable=False), Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False), Column("created_at", Text),
    Column("must_change_password", Integer), Column("disabled", Integer, nullable=False, server_default="0"),
    Column("session_version", Integer, nullable=False, server_default="0"),
    Column("source", Text, nullable=False, server_default="local"), Column("name_key", Text),
    Column("credential_version", Integer, nullable=False, server_default="0"),
    Index("idx_users_name", "name", unique=True), Index("idx_users_name_key", "name_key", unique=True),
)

api_tokens = Table(
    "api_tokens", metadata,
    _id(),
    Column("user_id", ID, ForeignKey("users.id")), Column("label", Text), Column("token_hash", Text),
    Column("created_at", Text), Column("last_used_at", Text),
    Column("credential_version", Integer, nullable=False, server_default="0"),
    Index("idx_api_tokens_token_hash", "token_hash", unique=True),
)

audit = Table(
    "audit", metadata,
    _id(),
    Column("time", Text), Column("user", Text), Column("action", Text), Column("run_id", ID), Column("detail", Text),
    Index("idx_audit_action", "action"), Index("idx_audit_action_id", "action", "id"),
)

defaults = Table(
    "defaults", metadata,
    Column("modality", Text, primary_key=True), Column("run_id", ID, ForeignKey("runs.id")),
    Column("set_at", Text), Column("set_by", Text), Column("reason", Text),
)

modality_settings = Table(
    "modality_settings", metadata,
    Column("modality", Text, primary_key=True), Column("auto_promote", Integer), Column("floors", Text),
    Column("updated_at", Text), Column("updated_by", Text), Column("operating_sensitivity", Float),
)

acceptance_sets = Table(
    "acceptance_sets", metadata,
    _id(),
    Column("modality", Text, nullable=False), Column("name", Text), Column("source", Text, nullable=False),
    Column("dataset", Text, nullable=False), Column("dataset_params", Text), Column("data_dir", Text),
    Column("share", Float), Column("seed", Integer), Column("items", Text, nullable=False),
    Column("created_at", Text), Column("created_by", Text),
    Index("idx_acceptance_sets_modality", "modality"),
)

acceptance_results = Table(
    "acceptance_results", metadata,
    Column("run_id", ID, ForeignKey("runs.id"), primary_key=True),
    Column("set_id", ID, ForeignKey("acceptance_sets.id"), primary_key=True),
    Column("metrics", Text), Column("evaluated_at", Text), Column("evaluated_by", Text),
)

validations = Table(
    "validations", metadata,
    _id(),
    Column("run_id", ID, ForeignKey("runs.id"), nullable=False), Column("dataset", Text, nullable=False),
    Column("data_dir", Text), Column("dataset_params", Text), Column("sites", Text), Column("n", Integer),
    Column("metrics", Text, nullable=False), Column("report", Text), Column("created_at", Text, nullable=False),
    Column("created_by", Text),
    Index("idx_validations_run_id", "run_id"),
)

# Trainer workers (``busi-web worker``), one row each while it runs: what the Runs page and ``busi-web workers``
# show, and how a stale claim is told from a live one.
workers = Table(
    "workers", metadata,
    Column("name", Text, primary_key=True), Column("host", Text), Column("pid", Integer), Column("slots", Integer),
    Column("started_at", Text), Column("seen_at", Float), Column("state", Text),
)

# Tables in the order a copy fills them (each after the tables its foreign keys point at).
COPY_ORDER = (runs, metrics, users, api_tokens, audit, defaults, modality_settings, acceptance_sets,
              acceptance_results, validations, workers)
