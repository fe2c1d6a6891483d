"""Users, roles and API tokens: the part of the store that authentication reads.

Passwords are stored as werkzeug salted hashes; API tokens as SHA-256 of a
random secret that is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from busi_web.errors import UserError
from busi_web.store.audit import AuditMixin
from busi_web.store.db import utc_now
from busi_web.store.passwords import one_time_password, require_strong
from busi_web.store.tables import api_tokens, users

ROLES = ("admin", "clinician")
DIRECTORY = "directory"  # users.source of accounts whose password the directory checks (LDAP)
# What every security event does to an account: its sessions end, and so do its API tokens.
REVOKE = {"session_version": users.c.session_version + 1, "credential_version": users.c.credential_version + 1}
# A user name: letters, digits, and . _ - @ inside (an e-mail address works), at most 64; NFKC first.
USER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._@-]{0,62}[A-Za-z0-9])?$")
USER_NAME_RULES = ("1 to 64 characters: ASCII letters and digits, and . _ - @ between them (no spaces, slashes, "
                   "accents or invisible characters)")


def name_key(name: str) -> str:
    """What makes two names the same account: NFKC, then case-folded (``ADMIN`` is ``admin``)."""
    return unicodedata.normalize("NFKC", name or "").casefold()


def check_user_name(name: Any) -> str:
    """A user name as every path that creates an account takes it (web, API, CLI, directory): NFKC-normalised
    and stripped, then checked against :data:`USER_NAME`; a 400 that says the rule otherwise."""
    if not isinstance(name, str):
        raise UserError(f"a user name is text: {USER_NAME_RULES}", 400, {"name": USER_NAME_RULES})
    clean = unicodedata.normalize("NFKC", name).strip()
    if not USER_NAME.match(clean):
        shown = clean.encode("unicode_escape").decode("ascii")[:80]
        raise UserError(f"user name {shown!r} is not allowed: {USER_NAME_RULES}", 400, {"name": USER_NAME_RULES})
    return clean


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A password hash made once per process, checked for names that have no password here."""
    return generate_password_hash(secrets.token_urlsafe(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UsersMixin(AuditMixin):
    """User and API token methods."""

    def add_user(self, name: str, role: str, password: str, *, must_change_password: bool = False,
                 by: str | None = None) -> dict[str, Any]:
        """Create an account (``by``: the admin who did, for the audit; else the account itself). The name must
        follow :func:`check_user_name` and be new whatever its case."""
        name = check_user_name(name)
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        require_strong(password, name)
        self._insert_user({"name": name, "role": role, "password_hash": generate_password_hash(password),
                           "created_at": utc_now(), "must_change_password": int(must_change_password)})
        self.audit("user.add", user=by or name, target=name, role=role)
        return self.get_user(name)

    def _insert_user(self, row: dict[str, Any]) -> None:
        """Insert an account row, refusing a name that exists already in any case (409)."""
        key = name_key(row["name"])
        try:
            with self.transaction() as conn:
                found = conn.execute(select(users.c.name).where(users.c.name_key == key)).scalar()
                if found is not None:
                    raise UserError(f"a user named {found!r} exists already (names are the same whatever their "
                                    "case)", 409, {"name": "taken"})
                conn.execute(users.insert().values(**row, name_key=key))
        except IntegrityError:
            raise UserError(f"a user named {row['name']!r} exists already", 409, {"name": "taken"}) from None

    def get_user(self, name: str) -> dict[str, Any] | None:
        """The account named ``name``, whatever the case it is typed in (``Nurse.Kim`` is ``nurse.kim``)."""
        rows = self._rows(select(users).where(users.c.name_key == name_key(name or ""))
                          .order_by((users.c.name == (name or "")).desc()).limit(1))
        return rows[0] if rows else None

    def get_user_by_id(self, user_id: int) -> dict[str, Any] | None:
        rows = self._rows(select(users).where(users.c.id == int(user_id)))
        return rows[0] if rows else None

    def list_users(self) -> list[dict[str, Any]]:
        """Every account without its password hash (``disabled`` as a bool)."""
        return [{**{k: v for k, v in r.items() if k != "password_hash"}, "disabled": bool(r["disabled"])}
                for r in self._rows(select(users).order_by(users.c.name))]

    def count_users(self, role: str | None = None) -> int:
        query = select(func.count()).select_from(users)
        if role is not None:
            query = query.where(users.c.role == role)
        return int(self._scalar(query))

    def check_password(self, name: str, password: str) -> dict[str, Any] | None:
        """The user when ``password`` is theirs and the account is enabled, else None (the same answer for an
        unknown name)."""
        user = self.get_user(name or "")
        if user is None or user.get("source") == DIRECTORY:
            # One hash check, as for a known name: the time of the answer does not tell a name exists.
            check_password_hash(_dummy_hash(), password or "")
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
            try:  # no password is kept: only the directory can say it
                self._insert_user({"name": check_user_name(name), "role": role, "source": DIRECTORY,
                                   "created_at": utc_now(),
                                   "password_hash": generate_password_hash(secrets.token_hex(32))})
            except UserError:  # created by a parallel login of the same user
                if self.get_user(name) is None:
                    raise
            else:
                self.audit("user.add", user=name, target=name, role=role, source=DIRECTORY)
            user = self.get_user(name)
        elif user["role"] != role:
            with self.transaction() as conn:
                conn.execute(update(users).where(users.c.id == user["id"]).values(role=role, **REVOKE))
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
        with self.transaction() as conn:
            user = self.get_user(name)
            if user is None:
                raise UserError(f"there is no user {name!r}")
            conn.execute(update(users).where(users.c.id == user["id"]).values(
                password_hash=generate_password_hash(password), must_change_password=0, **REVOKE))
        self.audit("user.password", user=name)

    def delete_user(self, name: str) -> None:
        with self.transaction() as conn:
            user = self.get_user(name)
            if user is None:
                raise UserError(f"there is no user {name!r}")
            conn.execute(delete(api_tokens).where(api_tokens.c.user_id == user["id"]))
            conn.execute(delete(users).where(users.c.id == user["id"]))
        self.audit("user.delete", user=name)

    # -- what an admin does to accounts (each audited with the admin as the user, the account as ``target``) ----
    def _other_enabled_admins(self, name: str) -> int:
        return int(self._scalar(select(func.count()).select_from(users).where(
            users.c.role == "admin", users.c.disabled == 0, users.c.name != name)))

    def _existing(self, name: str) -> dict[str, Any]:
        user = self.get_user(name)
        if user is None:
            raise UserError(f"there is no user {name!r}", 404, {"name": "no such user"})
        return user

    def set_role(self, name: str, role: str, *, by: str | None) -> dict[str, Any]:
        """Change ``name``'s role; the last enabled admin cannot stop being one."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 400, {"role": "unknown"})
        with self.transaction() as conn:
            user = self._existing(name)
            if user.get("source") == DIRECTORY:
                raise UserError(f"{name}'s role comes from the hospital directory's groups; change the groups "
                                "there (it applies at their next login)", 409)
            if user["role"] == "admin" and role != "admin" and not self._other_enabled_admins(name):
                raise UserError(f"{name} is the last enabled admin; make another admin first", 409)
            conn.execute(update(users).where(users.c.id == user["id"]).values(role=role, **REVOKE))
            self.audit("user.role", user=by, target=name, role=role, previous=user["role"])
        return self._existing(name)

    def set_disabled(self, name: str, disabled: bool, *, by: str | None) -> dict[str, Any]:
        """Disable (or enable again) ``name``: a disabled user cannot log in, and their sessions and API tokens
        stop working at once. Nobody disables themselves or the last enabled admin."""
        with self.transaction() as conn:
            user = self._existing(name)
            if disabled and name == by:
                raise UserError("you cannot disable your own account; ask another admin", 409)
            if disabled and user["role"] == "admin" and not self._other_enabled_admins(name):
                raise UserError(f"{name} is the last enabled admin; make another admin first", 409)
            conn.execute(update(users).where(users.c.id == user["id"]).values(disabled=int(bool(disabled)),
                                                                                 **REVOKE))
            self.audit("user.disable" if disabled else "user.enable", user=by, target=name)
        return self._existing(name)

    def end_sessions(self, name: str) -> None:
        """End every session of ``name`` (a session carries the version it was opened with; this raises it): a
        logout. A password change, a reset, a role change and disabling do it too, and end the API tokens."""
        with self.transaction() as conn:
            conn.execute(update(users).where(users.c.name_key == name_key(name)).values(
                session_version=users.c.session_version + 1))

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
        with self.transaction() as conn:
            user = self._existing(name)
            conn.execute(update(users).where(users.c.id == user["id"]).values(
                password_hash=generate_password_hash(password), must_change_password=1, **REVOKE))
            self.audit("user.password.reset", user=by, target=name)
        return password

    def require_new_password(self, name: str, *, by: str | None) -> dict[str, Any]:
        """Make ``name`` choose a new password at their next login (their sessions end now; the current password
        still opens the change-password page, and nothing else)."""
        self._refuse_directory(name, "ask IT to expire it")
        with self.transaction() as conn:
            user = self._existing(name)
            conn.execute(update(users).where(users.c.id == user["id"]).values(must_change_password=1, **REVOKE))
            self.audit("user.password.require_change", user=by, target=name)
        return self.public_user(name)

    # -- API tokens -----------------------------------------------------------------------------------------
    def create_token(self, name: str, label: str = "") -> str:
        """A new API token for user ``name``; the plain token is returned once and only its hash is kept."""
        user = self.get_user(name)
        if user is None:
            raise UserError(f"there is no user {name!r}")
        token = "bw_" + secrets.token_urlsafe(32)
        with self.transaction() as conn:
            conn.execute(api_tokens.insert().values(user_id=user["id"], label=label, token_hash=_token_hash(token),
                                                    created_at=utc_now(),
                                                    credential_version=user["credential_version"]))
        self.audit("token.create", user=name, label=label)
        return token

    def user_for_token(self, token: str) -> dict[str, Any] | None:
        """The user a token acts as, or None. A token ends with every event that ends its user's sessions for a
        reason of security (disabling, and enabling again, a password reset or change, a role change, a required
        new password): it works only while the user's credential version is the one it was made with and the
        account is enabled (while a new password is required, the login guard answers its requests with a 403).
        A plain logout ends the browser sessions, not the scripts' tokens. ``last_used_at`` is kept to the
        minute: a busy client does not write at every request."""
        t = api_tokens.c
        rows = self._rows(select(users, t.id.label("token_id"), t.last_used_at.label("token_used"))
                          .join(api_tokens, t.user_id == users.c.id)
                          .where(t.token_hash == _token_hash(token or ""), users.c.disabled == 0,
                                 t.credential_version == users.c.credential_version))
        if not rows:
            return None
        user = rows[0]
        token_id, used, now = user.pop("token_id"), user.pop("token_used"), utc_now()
        if not used or used[:16] != now[:16]:  # ISO 8601: the first 16 characters are the minute
            with self.transaction(immediate=False) as conn:
                conn.execute(update(api_tokens).where(t.id == token_id).values(last_used_at=now))
        return user

    def list_tokens(self, name: str | None = None) -> list[dict[str, Any]]:
        t = api_tokens.c
        query = (select(t.id, users.c.name.label("user"), t.label, t.created_at, t.last_used_at)
                 .join(users, users.c.id == t.user_id).order_by(t.id))
        if name is not None:
            query = query.where(users.c.name_key == name_key(name))
        return self._rows(query)

    def revoke_token(self, token_id: int) -> bool:
        with self.transaction() as conn:
            gone = conn.execute(delete(api_tokens).where(api_tokens.c.id == int(token_id))).rowcount
        if gone:
            self.audit("token.revoke", token_id=int(token_id))
        return bool(gone)
