"""Directory login: LDAP or Active Directory through ldap3, a directory group deciding the role.

With ``LDAP_URL`` set, a user who has no local account logs in with their
directory name and password:

1. the user's entry is found under ``LDAP_USER_BASE`` with ``LDAP_USER_FILTER``
   (``(uid={username})``; for Active Directory ``(sAMAccountName={username})``),
   searching as ``LDAP_BIND_DN`` (or anonymously when it is not set);
2. the password is checked by binding as that entry (an empty password is
   refused first: an LDAP bind without one would succeed anonymously);
3. the role comes from the groups: a member of ``LDAP_ADMIN_GROUP`` is an
   admin, of ``LDAP_CLINICIAN_GROUP`` a clinician (``member``,
   ``uniqueMember`` or ``memberUid`` of the group's entry); anyone else is
   refused with a message saying so.

Every network step is bounded by ``LDAP_TIMEOUT`` seconds, so a directory
that is down or does not answer gives a clear 503 within about that time,
never a hung login page. Local accounts keep working throughout, and a
name that exists as a local account is never taken over by the directory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from busi_web.errors import UserError

ADMIN, CLINICIAN = "admin", "clinician"


@dataclass(frozen=True)
class DirectoryUser:
    """Who the directory says logged in: the login name, the entry's DN, the role from the groups."""

    name: str
    dn: str
    role: str
    display_name: str | None = None


class DirectoryUnavailable(UserError):
    """The directory could not be reached or did not answer in time (503)."""

    def __init__(self, url: str, why: str):
        super().__init__(f"the hospital directory ({url}) does not answer ({why}); local accounts can still log "
                         "in; try again in a few minutes or tell IT", 503)
        # What a visitor who is not logged in may read: no address of the hospital's network.
        self.public = ("the hospital directory does not answer; local accounts can still log in; try again in a "
                       "few minutes or tell IT")


@dataclass(frozen=True)
class DirectorySettings:
    """The ``LDAP_*`` settings, checked when the app starts."""

    url: str
    user_base: str
    user_filter: str = "(uid={username})"
    bind_dn: str | None = None
    bind_password: str | None = None
    admin_group: str | None = None
    clinician_group: str | None = None
    timeout: float = 5.0
    start_tls: bool = False
    ca_file: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DirectorySettings | None:
        """The settings, or ``None`` when ``LDAP_URL`` is not set; ``ValueError`` naming a wrong key."""
        url = config.get("LDAP_URL")
        if not url:
            return None
        if urlsplit(str(url)).scheme not in ("ldap", "ldaps"):
            raise ValueError(f"LDAP_URL must be ldap://host[:port] or ldaps://host[:port], got {url!r}")
        if not config.get("LDAP_USER_BASE"):
            raise ValueError("LDAP_USER_BASE is required with LDAP_URL (e.g. 'ou=people,dc=hospital,dc=org')")
        if not (config.get("LDAP_ADMIN_GROUP") or config.get("LDAP_CLINICIAN_GROUP")):
            raise ValueError("set LDAP_ADMIN_GROUP and/or LDAP_CLINICIAN_GROUP (group DNs) with LDAP_URL: the "
                             "groups decide who may log in, and as what")
        user_filter = str(config.get("LDAP_USER_FILTER") or cls.user_filter)
        if "{username}" not in user_filter:
            raise ValueError(f"LDAP_USER_FILTER must contain {{username}}, got {user_filter!r}")
        try:
            timeout = float(config.get("LDAP_TIMEOUT") or cls.timeout)
        except (TypeError, ValueError):
            raise ValueError(f"LDAP_TIMEOUT must be a number of seconds, got {config.get('LDAP_TIMEOUT')!r}") \
                from None
        return cls(url=str(url), user_base=str(config["LDAP_USER_BASE"]), user_filter=user_filter,
                   bind_dn=config.get("LDAP_BIND_DN") or None, bind_password=config.get("LDAP_BIND_PASSWORD"),
                   admin_group=config.get("LDAP_ADMIN_GROUP") or None,
                   clinician_group=config.get("LDAP_CLINICIAN_GROUP") or None, timeout=timeout,
                   start_tls=bool(config.get("LDAP_START_TLS")), ca_file=config.get("LDAP_CA_FILE") or None)


class Directory:
    """Checks names and passwords against the directory and reads the role from its groups."""

    def __init__(self, settings: DirectorySettings):
        self.settings = settings

    def _server(self):
        # ldap3 and ssl load only when a directory is configured (most instances have none)
        import ssl

        from ldap3 import Server, Tls  # with ssl, above

        s = self.settings
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=s.ca_file) if s.ca_file else None
        return Server(s.url, connect_timeout=self._seconds, tls=tls, get_info=None)

    @property
    def _seconds(self) -> int:
        """The timeout as ldap3 takes it (whole seconds: it packs it into the socket's timeout option)."""
        return max(1, math.ceil(self.settings.timeout))

    def _connect(self, dn: str | None, password: str | None):
        """A bound connection (``dn`` ``None``: anonymous); ``None`` when the directory refuses the credentials."""
        # ldap3 loads only when a directory is configured
        from ldap3 import Connection
        from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPSocketOpenError  # with Connection, above

        s = self.settings
        conn = Connection(self._server(), user=dn, password=password, receive_timeout=self._seconds,
                          raise_exceptions=False, read_only=True)
        try:
            conn.open()
            if s.start_tls:
                conn.start_tls()
            if not conn.bind():
                conn.unbind()
                return None
        except LDAPBindError:
            return None
        except LDAPSocketOpenError as exc:
            raise DirectoryUnavailable(s.url, _short(exc)) from None
        except LDAPException as exc:  # a timeout, a reset connection, a TLS failure: the directory is not usable
            raise DirectoryUnavailable(s.url, _short(exc)) from None
        except OSError as exc:
            raise DirectoryUnavailable(s.url, _short(exc)) from None
        return conn

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        """The directory user when ``password`` is theirs; ``None`` for a wrong name or password.

        Raises :class:`DirectoryUnavailable` (503) when the directory cannot be reached or does not answer,
        and a 403 :class:`UserError` for a user in neither busi-web group.
        """
        # ldap3 loads only when a directory is configured
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars  # with ldap3, above

        s = self.settings
        if not username or not password:  # an LDAP "unauthenticated bind" would succeed without a password
            return None
        search = self._connect(s.bind_dn, s.bind_password)
        if search is None:
            raise DirectoryUnavailable(s.url, "the service account LDAP_BIND_DN was refused; check its password")
        try:
            search.search(s.user_base, s.user_filter.replace("{username}", escape_filter_chars(username)),
                          attributes=["cn", "displayName", "uid"], size_limit=2, time_limit=self._seconds)
            entries = list(search.entries)
            if len(entries) != 1:
                return None  # no such user, or an ambiguous filter: never guess which entry is meant
            dn = entries[0].entry_dn
            display = _first(entries[0], "displayName") or _first(entries[0], "cn")
            uid = _first(entries[0], "uid") or username
            user = self._connect(dn, password)
            if user is None:
                return None
            user.unbind()
            groups = {role: group for role, group in ((ADMIN, s.admin_group), (CLINICIAN, s.clinician_group))
                      if group}
            member_of = [role for role, group in groups.items() if self._is_member(search, group, dn, uid)]
        except LDAPException as exc:
            raise DirectoryUnavailable(s.url, _short(exc)) from None
        finally:
            search.unbind()
        if not member_of:
            raise UserError(f"{username} is known to the directory but is in none of busi-web's groups "
                            f"({', '.join(groups.values())}); ask IT to add you to one", 403)
        # The directory's own name for the person (its uid attribute), not the name as typed: ``Nurse.Kim`` and
        # ``nurse.kim`` are one account.
        return DirectoryUser(uid, dn, ADMIN if ADMIN in member_of else CLINICIAN, display)

    def _is_member(self, conn, group: str, dn: str, uid: str) -> bool:
        # ldap3 loads only when a directory is configured
        from ldap3 import BASE
        from ldap3.utils.conv import escape_filter_chars  # with BASE, above

        who = f"(|(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)})" \
              f"(memberUid={escape_filter_chars(uid)}))"
        conn.search(group, who, search_scope=BASE, attributes=[], size_limit=1)
        return bool(conn.entries)


def _first(entry: Any, attribute: str) -> str | None:
    try:
        values = entry[attribute].values
    except (KeyError, AttributeError):
        return None
    return str(values[0]) if values else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


def directory_from_config(config: Mapping[str, Any]) -> Directory | None:
    """The app's directory, or ``None`` when ``LDAP_URL`` is not set (checked at start, naming a wrong key)."""
    settings = DirectorySettings.from_config(config)
    return None if settings is None else Directory(settings)
