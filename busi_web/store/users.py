"""Users, roles and API tokens: the part of the store that authentication reads.

Passwords are stored as werkzeug salted hashes; API tokens as SHA-256 of a
random secret that is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from busi_web.errors import UserError
from busi_web.store.audit import AuditMixin
from busi_web.store.db import utc_now
from busi_web.store.passwords import one_time_password, require_strong

ROLES = ("admin", "clinician")
DIRECTORY = "directory"  # users.source of accounts whose password the directory checks (LDAP)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UsersMixin(AuditMixin):
    """User and API token methods."""

    def add_user(self, name: str, role: str, password: str, *, must_change_password: bool = False,
                 by: str | None = None) -> dict[str, Any]:
        """Create an account (``by``: the admin who did, for the audit; else the account itself)."""
        name = (name or "").strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise UserError("a user name is 1-64 characters with no spaces")
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        require_strong(password, name)
        try:
            with self.transaction() as db:
                db["users"].insert({"name": name, "role": role, "password_hash": generate_password_hash(password),
                                    "created_at": utc_now(), "must_change_password": int(must_change_password)})
        except sqlite3.IntegrityError:
            raise UserError(f"a user named {name!r} exists already") from None
        self.audit("user.add", user=by or name, target=name, role=role)
        return self.get_user(name)

    def get_user(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM users WHERE name = ?", [name])
        return dict(rows[0]) if rows else None

    def get_user_by_id(self, user_id: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM users WHERE id = ?", [int(user_id)])
        return dict(rows[0]) if rows else None

    def list_users(self) -> list[dict[str, Any]]:
        """Every account without its password hash (``disabled`` as a bool)."""
        return [{**{k: v for k, v in dict(r).items() if k != "password_hash"}, "disabled": bool(r["disabled"])}
                for r in self._rows("SELECT * FROM users ORDER BY name", [])]

    def count_users(self, role: str | None = None) -> int:
        if role is None:
            return self._rows("SELECT count(*) AS n FROM users", [])[0]["n"]
        return self._rows("SELECT count(*) AS n FROM users WHERE role = ?", [role])[0]["n"]

    def check_password(self, name: str, password: str) -> dict[str, Any] | None:
        """The user when ``password`` is theirs and the account is enabled, else None (the same answer for an
        unknown name)."""
        user = self.get_user(name or "")
        if user is None or user.get("source") == DIRECTORY:
            check_password_hash(generate_password_hash("x"), password or "")  # similar time either way
            return None
        if not check_password_hash(user["password_hash"], password or "") or user.get("disabled"):
            return None
        return user

    def directory_login(self, name: str, role: str) -> dict[str, Any] | None:
        """The account of a user the directory has just authenticated, created or given the directory's role
        (a role change ends their other sessions); ``None`` when an admin disabled it here. Raises a 409 when
        ``name`` is a local account (a directory user never takes over a local one)."""
        user = self.get_user(name)
        if user is not None and user.get("source") != DIRECTORY:
            raise UserError(f"{name} is a local account here: log in with its local password (the directory "
                            "does not manage it)", 409)
        if user is None:
            try:
                with self.transaction() as db:  # no password is kept: only the directory can say it
                    db["users"].insert({"name": name, "role": role, "source": DIRECTORY, "created_at": utc_now(),
                                        "password_hash": generate_password_hash(secrets.token_hex(32))})
            except sqlite3.IntegrityError:  # created by a parallel login of the same user
                pass
            else:
                self.audit("user.add", user=name, target=name, role=role, source=DIRECTORY)
            user = self.get_user(name)
        elif user["role"] != role:
            with self.transaction() as db:
                db.execute("UPDATE users SET role = ?, session_version = session_version + 1 WHERE id = ?",
                           [role, user["id"]])
            self.audit("user.role", user=None, target=name, role=role, previous=user["role"], source=DIRECTORY)
            user = self.get_user(name)
        return None if user.get("disabled") else user

    def _refuse_directory(self, name: str, what: str) -> None:
        """Refuse ``what`` for a directory account (its password lives in the directory)."""
        user = self.get_user(name)
        if user is not None and user.get("source") == DIRECTORY:
            raise UserError(f"{name}'s password is managed by the hospital directory; {what} there", 409)

    def set_password(self, name: str, password: str) -> None:
        """Set ``name``'s own password (it must follow :mod:`~busi_web.store.passwords`' rules); every session of
        theirs ends, and a required change is done."""
        require_strong(password, name)
        self._refuse_directory(name, "change it")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone() is None:
                raise UserError(f"there is no user {name!r}")
            db.execute("UPDATE users SET password_hash = ?, must_change_password = 0, "
                       "session_version = session_version + 1 WHERE name = ?", [generate_password_hash(password), name])
        self.audit("user.password", user=name)

    def delete_user(self, name: str) -> None:
        with self.transaction() as db:
            user = self.get_user(name)
            if user is None:
                raise UserError(f"there is no user {name!r}")
            db.execute("DELETE FROM api_tokens WHERE user_id = ?", [user["id"]])
            db.execute("DELETE FROM users WHERE id = ?", [user["id"]])
        self.audit("user.delete", user=name)

    # -- what an admin does to accounts (each audited with the admin as the user, the account as ``target``) ----
    def _other_enabled_admins(self, name: str) -> int:
        return self._rows("SELECT count(*) AS n FROM users WHERE role = 'admin' AND NOT disabled AND name != ?",
                          [name])[0]["n"]

    def _existing(self, name: str) -> dict[str, Any]:
        user = self.get_user(name)
        if user is None:
            raise UserError(f"there is no user {name!r}", 404, {"name": "no such user"})
        return user

    def set_role(self, name: str, role: str, *, by: str | None) -> dict[str, Any]:
        """Change ``name``'s role; the last enabled admin cannot stop being one."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 400, {"role": "unknown"})
        with self.transaction() as db:
            user = self._existing(name)
            if user.get("source") == DIRECTORY:
                raise UserError(f"{name}'s role comes from the hospital directory's groups; change the groups "
                                "there (it applies at their next login)", 409)
            if user["role"] == "admin" and role != "admin" and not self._other_enabled_admins(name):
                raise UserError(f"{name} is the last enabled admin; make another admin first", 409)
            db.execute("UPDATE users SET role = ?, session_version = session_version + 1 WHERE id = ?",
                       [role, user["id"]])
            self.audit("user.role", user=by, target=name, role=role, previous=user["role"])
        return self._existing(name)

    def set_disabled(self, name: str, disabled: bool, *, by: str | None) -> dict[str, Any]:
        """Disable (or enable again) ``name``: a disabled user cannot log in, and their sessions and API tokens
        stop working at once. Nobody disables themselves or the last enabled admin."""
        with self.transaction() as db:
            user = self._existing(name)
            if disabled and name == by:
                raise UserError("you cannot disable your own account; ask another admin", 409)
            if disabled and user["role"] == "admin" and not self._other_enabled_admins(name):
                raise UserError(f"{name} is the last enabled admin; make another admin first", 409)
            db.execute("UPDATE users SET disabled = ?, session_version = session_version + 1 WHERE id = ?",
                       [int(bool(disabled)), user["id"]])
            self.audit("user.disable" if disabled else "user.enable", user=by, target=name)
        return self._existing(name)

    def end_sessions(self, name: str) -> None:
        """End every session of ``name`` (a session carries the version it was opened with; this raises it).
        A password change, a reset, a role change and disabling do it too."""
        with self.transaction() as db:
            db.execute("UPDATE users SET session_version = session_version + 1 WHERE name = ?", [name])

    def invite_user(self, name: str, role: str, *, by: str | None) -> str:
        """Create an account with a one-time password (returned once), to be changed at the first login."""
        password = one_time_password()
        self.add_user(name, role, password, must_change_password=True, by=by)
        return password

    def public_user(self, name: str) -> dict[str, Any]:
        """An account as admins see it: no password hash (404 for an unknown name)."""
        user = self._existing(name)
        return {**{k: v for k, v in user.items() if k != "password_hash"}, "disabled": bool(user["disabled"])}

    def reset_password(self, name: str, *, by: str | None) -> str:
        """Give ``name`` a new one-time password (returned once): they must change it when they next log in."""
        password = one_time_password()
        self._refuse_directory(name, "reset it")
        with self.transaction() as db:
            user = self._existing(name)
            db.execute("UPDATE users SET password_hash = ?, must_change_password = 1, "
                       "session_version = session_version + 1 WHERE id = ?",
                       [generate_password_hash(password), user["id"]])
            self.audit("user.password.reset", user=by, target=name)
        return password

    def require_new_password(self, name: str, *, by: str | None) -> dict[str, Any]:
        """Make ``name`` choose a new password at their next login (their sessions end now; the current password
        still opens the change-password page, and nothing else)."""
        self._refuse_directory(name, "ask IT to expire it")
        with self.transaction() as db:
            user = self._existing(name)
            db.execute("UPDATE users SET must_change_password = 1, session_version = session_version + 1 "
                       "WHERE id = ?", [user["id"]])
            self.audit("user.password.require_change", user=by, target=name)
        return self.public_user(name)

    # -- API tokens -----------------------------------------------------------------------------------------
    def create_token(self, name: str, label: str = "") -> str:
        """A new API token for user ``name``; the plain token is returned once and only its hash is kept."""
        user = self.get_user(name)
        if user is None:
            raise UserError(f"there is no user {name!r}")
        token = "bw_" + secrets.token_urlsafe(32)
        with self.transaction() as db:
            db["api_tokens"].insert({"user_id": user["id"], "label": label, "token_hash": _token_hash(token),
                                     "created_at": utc_now()})
        self.audit("token.create", user=name, label=label)
        return token

    def user_for_token(self, token: str) -> dict[str, Any] | None:
        """The enabled user a token acts as, or None. ``last_used_at`` is kept to the minute: a busy client
        does not write to the database at every request."""
        rows = self._rows("SELECT users.*, api_tokens.id AS token_id, api_tokens.last_used_at AS token_used "
                          "FROM api_tokens JOIN users ON users.id = api_tokens.user_id "
                          "WHERE token_hash = ? AND NOT users.disabled", [_token_hash(token or "")])
        if not rows:
            return None
        user = dict(rows[0])
        token_id, used, now = user.pop("token_id"), user.pop("token_used"), utc_now()
        if not used or used[:16] != now[:16]:  # ISO 8601: the first 16 characters are the minute
            with self.transaction() as db:
                db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", [now, token_id])
        return user

    def list_tokens(self, name: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT api_tokens.id, users.name AS user, label, api_tokens.created_at, last_used_at FROM api_tokens "
               "JOIN users ON users.id = api_tokens.user_id")
        args: list[Any] = []
        if name is not None:
            sql += " WHERE users.name = ?"
            args.append(name)
        return [dict(r) for r in self._rows(sql + " ORDER BY api_tokens.id", args)]

    def revoke_token(self, token_id: int) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM api_tokens WHERE id = ?", [int(token_id)]).rowcount
        if gone:
            self.audit("token.revoke", token_id=int(token_id))
        return bool(gone)
