"""The SQLite store's schema before Alembic: its sqlite-utils migrations m001 to m007, frozen.

A SQLite file made by an earlier busi-web has some of these applied (they are
recorded in its ``_sqlite_migrations`` table). When it opens, the rest are
applied here, and the file is then stamped at Alembic's baseline revision
``r001``, which is exactly this schema; later changes are Alembic revisions
(:mod:`busi_web.store.migrations`). A new database of either kind starts at
``r001`` directly. Nothing is added here any more.
"""

from __future__ import annotations

from sqlalchemy import Connection, inspect
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("busi_web")
LEGACY_TABLE = "_sqlite_migrations"


def upgrade_legacy(conn: Connection) -> bool:
    """Apply the sqlite-utils migrations an old SQLite file lacks, on ``conn`` (inside the store's write
    transaction). Returns whether the file was one (it then has the baseline schema); ``False`` for a new file."""
    if not inspect(conn).has_table(LEGACY_TABLE):
        return False
    MIGRATIONS.apply(Database(conn.connection.driver_connection))
    return True


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


@MIGRATIONS()
def m002_modalities_defaults_acceptance(db: Database) -> None:
    """Defaults per modality (an admin's decision, with its reason) instead of an active model per dataset;
    per-modality settings (auto-promotion, floors); acceptance sets and the results of models on them."""
    db["runs"].add_column("modality", str)
    # Runs before this migration: the one built-in mammography dataset is mias; everything else is ultrasound.
    db.execute("UPDATE runs SET modality = CASE WHEN dataset = 'mias' THEN 'mammography' ELSE 'ultrasound' END")
    db["defaults"].create({"modality": str, "run_id": int, "set_at": str, "set_by": str, "reason": str},
                          pk="modality", foreign_keys=[("run_id", "runs", "id")])
    carried = db.execute("SELECT m.run_id, m.activated_at, m.activated_by, r.modality FROM models m "
                         "JOIN runs r ON r.id = m.run_id ORDER BY m.activated_at, m.rowid").fetchall()
    for run_id, at, by, modality in carried:  # the latest activation of each modality wins
        db["defaults"].insert({"modality": modality, "run_id": run_id, "set_at": at, "set_by": by,
                               "reason": "carried over from the active model of its dataset"}, replace=True)
    db["models"].drop()
    db["modality_settings"].create({"modality": str, "auto_promote": int, "floors": str, "updated_at": str,
                                    "updated_by": str}, pk="modality")
    db["acceptance_sets"].create({
        "id": int, "modality": str, "name": str, "source": str, "dataset": str, "dataset_params": str,
        "data_dir": str, "share": float, "seed": int, "items": str, "created_at": str, "created_by": str,
    }, pk="id", not_null={"modality", "source", "dataset", "items"})
    db["acceptance_sets"].create_index(["modality"])
    db["acceptance_results"].create({"run_id": int, "set_id": int, "metrics": str, "evaluated_at": str,
                                     "evaluated_by": str}, pk=("run_id", "set_id"),
                                    foreign_keys=[("run_id", "runs", "id"), ("set_id", "acceptance_sets", "id")])


@MIGRATIONS()
def m003_disabled_users(db: Database) -> None:
    """An admin can disable an account (kept for the audit trail) instead of deleting it."""
    db["users"].add_column("disabled", int, not_null_default=0)


@MIGRATIONS()
def m004_session_versions(db: Database) -> None:
    """A counter per user that every session carries: raising it ends all of that user's sessions."""
    db["users"].add_column("session_version", int, not_null_default=0)


@MIGRATIONS()
def m005_account_source(db: Database) -> None:
    """Where an account's password lives: ``local`` (here, hashed) or ``directory`` (LDAP; none kept here)."""
    db["users"].add_column("source", str, not_null_default="local")


@MIGRATIONS()
def m006_sites(db: Database) -> None:
    """The sensitivity for malignancy each modality's operating point keeps; external validations, recorded."""
    db["modality_settings"].add_column("operating_sensitivity", float)
    db["validations"].create({
        "id": int, "run_id": int, "dataset": str, "data_dir": str, "dataset_params": str, "sites": str, "n": int,
        "metrics": str, "report": str, "created_at": str, "created_by": str,
    }, pk="id", foreign_keys=[("run_id", "runs", "id")], not_null={"run_id", "dataset", "metrics", "created_at"})
    db["validations"].create_index(["run_id"])


@MIGRATIONS()
def m007_name_keys_and_credential_versions(db: Database) -> None:
    """User names are unique whatever their case (``name_key``: the case-folded NFKC name). A counter per user,
    ``credential_version``, that every security event raises (disable, reset, password or role change); an API
    token carries the one its user had when it was made, and stops working when it changes."""
    import unicodedata  # only this migration needs it

    db["users"].add_column("name_key", str)
    db["users"].add_column("credential_version", int, not_null_default=0)
    seen: set[str] = set()
    clash = False
    for row in db.execute("SELECT id, name FROM users").fetchall():
        key = unicodedata.normalize("NFKC", row[1]).casefold()
        clash = clash or key in seen
        seen.add(key)
        db.execute("UPDATE users SET name_key = ? WHERE id = ?", [key, row[0]])
    # Accounts that differ only in case (made before this rule) keep working; new ones cannot be made.
    db["users"].create_index(["name_key"], unique=not clash)
    db["api_tokens"].add_column("credential_version", int, not_null_default=0)
