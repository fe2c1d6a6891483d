"""Command line for users and API tokens, and the first admin that ``busi-web init`` creates.

``busi-web users add NAME --role admin|clinician`` asks for the password (twice)
or reads it from stdin with ``--password-stdin`` (for scripts); ``users list``,
``users passwd NAME``, ``users role NAME ROLE``, ``users disable|enable NAME``,
``users reset NAME`` (a one-time password), ``users delete NAME``; ``tokens create NAME`` prints a
new API token once, ``tokens list``, ``tokens revoke ID``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from busi_web.cli.common import services, user_errors
from busi_web.config import ADMIN_PASSWORD_FILE, forget_admin_password_file
from busi_web.errors import UserError
from busi_web.store.passwords import RULES, one_time_password
from busi_web.store.users import ROLES, check_user_name

FIRST_ADMIN = "admin"


def _store():
    return services().store


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        # One line; a trailing newline from `echo` is not part of the password.
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on stdin; pipe it in, e.g. `printf %s \"$PW\" | busi-web ...`")
        return password
    return click.prompt(f"{prompt} ({RULES})", hide_input=True,
                        confirmation_prompt=True)


@click.group("users")
def users_group() -> None:
    """Manage user accounts (roles: admin, clinician)."""


@users_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="admin: also trains, cancels, promotes.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@with_appcontext
@user_errors
def users_add(name: str, role: str, password_stdin: bool) -> None:
    """Create user NAME with ROLE."""
    name = check_user_name(name)  # the name's rules first: no password is asked for an account that cannot be
    if _store().get_user(name) is not None:
        raise click.ClickException(f"a user named {name!r} exists already; `busi-web users passwd {name}` "
                                   "changes the password")
    _store().add_user(name, role, _read_password(password_stdin))
    click.echo(f"created {role} {name}")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def users_list(as_json: bool) -> None:
    """List users and their roles."""
    users = _store().list_users()
    if as_json:
        click.echo(json.dumps(users, indent=2))
        return
    if not users:
        click.echo("no users yet; `busi-web init` creates the first admin")
    for u in users:
        note = "  (one-time password not changed yet)" if u.get("must_change_password") else ""
        click.echo(f"{u['name']:<24} {u['role']:<10} created {u['created_at']}{note}")


@users_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of stdin.")
@with_appcontext
@user_errors
def users_passwd(name: str, password_stdin: bool) -> None:
    """Set a new password for user NAME."""
    if _store().get_user(name) is None:
        raise click.ClickException(f"there is no user {name!r}; `busi-web users list` shows them")
    _store().set_password(name, _read_password(password_stdin, "New password"))
    forget_admin_password_file(current_app.instance_path, name)
    click.echo(f"password of {name} changed")


@users_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@user_errors
def users_delete(name: str, yes: bool) -> None:
    """Delete user NAME and their API tokens."""
    store = _store()
    user = store.get_user(name)
    if user is None:
        raise click.ClickException(f"there is no user {name!r}; `busi-web users list` shows them")
    if user["role"] == "admin" and store.count_users("admin") == 1:
        raise click.ClickException(f"{name} is the last admin; add another admin before deleting this one")
    if not yes:
        click.confirm(f"delete {user['role']} {name} and their API tokens?", abort=True)
    store.delete_user(name)
    click.echo(f"deleted {name}")


@users_group.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@with_appcontext
@user_errors
def users_role(name: str, role: str) -> None:
    """Give user NAME the role ROLE (the last enabled admin stays one)."""
    _store().set_role(name, role, by="cli")
    click.echo(f"{name} is now a {role}")


@users_group.command("disable")
@click.argument("name")
@with_appcontext
@user_errors
def users_disable(name: str) -> None:
    """Disable user NAME: no login, and their sessions and API tokens stop working at once."""
    _store().set_disabled(name, True, by="cli")
    click.echo(f"disabled {name}")


@users_group.command("enable")
@click.argument("name")
@with_appcontext
@user_errors
def users_enable(name: str) -> None:
    """Enable user NAME again."""
    _store().set_disabled(name, False, by="cli")
    click.echo(f"enabled {name}")


@users_group.command("reset")
@click.argument("name")
@with_appcontext
@user_errors
def users_reset(name: str) -> None:
    """Give user NAME a new one-time password (printed once), to be changed at their next login."""
    password = _store().reset_password(name, by="cli")
    click.echo(password)
    click.echo(f"(one-time password of {name}; they must change it when they log in)", err=True)


@users_group.command("expire")
@click.argument("name")
@with_appcontext
@user_errors
def users_expire(name: str) -> None:
    """Make user NAME choose a new password at their next login (their sessions end now)."""
    _store().require_new_password(name, by="cli")
    click.echo(f"{name} must choose a new password at their next login")


@click.group("tokens")
def tokens_group() -> None:
    """Manage API tokens (sent as `Authorization: Bearer <token>`)."""


@tokens_group.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the token is for (shown by `tokens list`).")
@with_appcontext
@user_errors
def tokens_create(name: str, label: str) -> None:
    """Create an API token acting as user NAME; it is printed once and cannot be shown again."""
    if (_store().get_user(name) or {}).get("must_change_password"):
        raise click.ClickException(
            f"{name} must choose a new password first (log in at /login, or `busi-web users passwd {name}`): a "
            "token made now would answer nothing, and the new password would end it")
    try:
        token = _store().create_token(name, label)
    except UserError as exc:
        raise click.ClickException(f"{exc}; `busi-web users list` shows them") from None
    click.echo(token)
    click.echo(f"(API token for {name}; store it now, it cannot be shown again)", err=True)


@tokens_group.command("list")
@click.option("--user", "name", default=None, help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def tokens_list(name: str | None, as_json: bool) -> None:
    """List API tokens (ids, users, labels, last use; never the tokens themselves)."""
    tokens = _store().list_tokens(name)
    if as_json:
        click.echo(json.dumps(tokens, indent=2))
        return
    if not tokens:
        click.echo("no API tokens")
    for t in tokens:
        click.echo(f"{t['id']:>4}  {t['user']:<20} {t['label'] or '-':<20} created {t['created_at']}  "
                   f"last used {t['last_used_at'] or 'never'}")


@tokens_group.command("revoke")
@click.argument("token_id", type=int)
@with_appcontext
@user_errors
def tokens_revoke(token_id: int) -> None:
    """Revoke API token ID (see `tokens list`)."""
    if not _store().revoke_token(token_id):
        raise click.ClickException(f"there is no API token {token_id}; `busi-web tokens list` shows them")
    click.echo(f"revoked token {token_id}")


def create_first_admin(app: Flask) -> str | None:
    """When there are no users, create ``admin`` with a random one-time password; print it and save it.

    The password also goes to ``instance/ADMIN_PASSWORD.txt`` (mode 600), which is deleted when the admin
    changes the password. Returns the password, or None when users exist already.
    """
    store = services().store
    if store.count_users() > 0:
        return None
    password = one_time_password()
    store.add_user(FIRST_ADMIN, "admin", password, must_change_password=True)
    path = Path(app.instance_path) / ADMIN_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{FIRST_ADMIN}: {password}\n")
    path.chmod(0o600)
    click.echo("")
    click.echo(f"  First administrator created: user '{FIRST_ADMIN}', one-time password: {password}")
    click.echo(f"  (also saved in {path} until you change it; log in and change it at /account/password)")
    click.echo("")
    return password


COMMANDS = [users_group, tokens_group]
