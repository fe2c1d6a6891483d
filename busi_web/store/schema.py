"""The store's schema, as sqlite-utils migrations (applied in order, each exactly once, by :class:`JobStore`).

Never edit a migration that has shipped: add a new one. Every migration runs
inside the store's ``BEGIN IMMEDIATE`` transaction together with its record.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("busi_web")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db["runs"].create({
        "id": int, "name": str, "status": str, "backbone": str, "dataset": str, "data_dir": str, "params": str,
        "created_at": str, "created_by": str, "started_at": str, "finished_at": str, "run_dir": str, "pid": int,
        "error": str, "cancel_requested": int, "epochs_done": int, "best_metric": float, "best_metric_name": str,
        "test_macro_f1": float, "test_accuracy": float,
    }, pk="id", not_null={"status", "backbone", "dataset", "created_at"})
    db["runs"].create_index(["status"])
    db["runs"].create_index(["dataset"])
    db["metrics"].create({"id": int, "run_id": int, "epoch": int, "step": int, "key": str, "value": float,
                          "time": float}, pk="id", foreign_keys=[("run_id", "runs", "id")],
                         not_null={"run_id", "key"})
    db["metrics"].create_index(["run_id", "id"])
    db["models"].create({"dataset": str, "run_id": int, "checkpoint": str, "activated_at": str,
                         "activated_by": str}, pk="dataset", foreign_keys=[("run_id", "runs", "id")])
    db["users"].create({"id": int, "name": str, "role": str, "password_hash": str, "created_at": str,
                        "must_change_password": int}, pk="id", not_null={"name", "role", "password_hash"})
    db["users"].create_index(["name"], unique=True)
    db["api_tokens"].create({"id": int, "user_id": int, "label": str, "token_hash": str, "created_at": str,
                             "last_used_at": str}, pk="id", foreign_keys=[("user_id", "users", "id")])
    db["api_tokens"].create_index(["token_hash"], unique=True)
    db["audit"].create({"id": int, "time": str, "user": str, "action": str, "run_id": int, "detail": str}, pk="id")
    db["audit"].create_index(["action"])
