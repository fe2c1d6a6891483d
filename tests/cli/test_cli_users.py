"""`busi-web users ...`, `busi-web tokens ...` and the first admin created by `busi-web init`."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import run_cli


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(args=list(args), input=input, catch_exceptions=False)

    return invoke


def test_users_add_with_prompt_or_stdin_list_and_login(cli, store, app):
    r = cli("users", "add", "ana", "--role", "clinician", input="hollow-pepper-12\nhollow-pepper-12\n")
    assert r.exit_code == 0 and "created clinician ana" in r.output
    r = cli("users", "add", "root", "--role", "admin", "--password-stdin", input="amber-otter-99\n")
    assert r.exit_code == 0, r.output
    assert store.check_password("root", "amber-otter-99")["role"] == "admin"
    assert store.check_password("ana", "hollow-pepper-12")["role"] == "clinician"
    listed = cli("users", "list").output
    assert re.search(r"^ana\s+clinician", listed, re.M) and re.search(r"^root\s+admin", listed, re.M)
    as_json = json.loads(cli("users", "list", "--json").output)
    assert {u["name"] for u in as_json} == {"ana", "root"} and all("password_hash" not in u for u in as_json)
    client = app.test_client()
    assert client.post("/login", data={"username": "ana", "password": "hollow-pepper-12"}).status_code == 302


@pytest.mark.parametrize("args, stdin, message", [
    (["users", "add", "x", "--role", "nurse", "--password-stdin"], "hollow-pepper-12\n", "Invalid value for '--role'"),
    (["users", "add", "x", "--role", "admin", "--password-stdin"], "short\n", "at least 12 characters"),
    (["users", "add", "x", "--role", "admin", "--password-stdin"], "", "no password on stdin"),
    (["users", "add", "two words", "--role", "admin", "--password-stdin"], "hollow-pepper-12\n", "no spaces"),
    (["users", "passwd", "ghost", "--password-stdin"], "hollow-pepper-12\n", "there is no user 'ghost'"),
    (["users", "delete", "ghost", "--yes"], None, "there is no user 'ghost'"),
    (["tokens", "create", "ghost"], None, "there is no user 'ghost'"),
    (["tokens", "revoke", "42"], None, "there is no API token 42"),
])
def test_bad_user_commands_fail_with_a_message(cli, args, stdin, message):
    r = cli(*args, input=stdin)
    assert r.exit_code != 0 and message in r.output


def test_duplicate_user_passwd_and_delete_rules(cli, store):
    cli("users", "add", "boss", "--role", "admin", "--password-stdin", input="copper-violet-33\n")
    r = cli("users", "add", "boss", "--role", "clinician", "--password-stdin", input="tawny-glacier-61\n")
    assert r.exit_code != 0 and "exists already" in r.output
    r = cli("users", "passwd", "boss", "--password-stdin", input="copper-violet-34\n")
    assert r.exit_code == 0 and store.check_password("boss", "copper-violet-34")
    r = cli("users", "delete", "boss", "--yes")
    assert r.exit_code != 0 and "last admin" in r.output
    cli("users", "add", "ana", "--role", "clinician", "--password-stdin", input="hollow-pepper-12\n")
    r = cli("users", "delete", "ana", input="n\n")
    assert r.exit_code != 0 and store.get_user("ana") is not None  # declined at the prompt
    r = cli("users", "delete", "ana", "--yes")
    assert r.exit_code == 0 and store.get_user("ana") is None


def test_tokens_create_list_revoke_and_use(cli, store, app):
    cli("users", "add", "bot", "--role", "clinician", "--password-stdin", input="silver-meadow-26\n")
    r = cli("tokens", "create", "bot", "--label", "pacs bridge")
    token = r.stdout.strip().splitlines()[0]
    assert r.exit_code == 0 and token.startswith("bw_") and "cannot be shown again" in r.stderr
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=headers).get_json()["name"] == "bot"
    listed = cli("tokens", "list").output
    assert "pacs bridge" in listed and token not in listed
    (row,) = json.loads(cli("tokens", "list", "--user", "bot", "--json").output)
    assert row["user"] == "bot" and row["last_used_at"]
    assert cli("tokens", "revoke", str(row["id"])).exit_code == 0
    assert client.get("/api/me", headers=headers).status_code == 401
    assert "no API tokens" in cli("tokens", "list").output


def test_no_token_for_a_user_who_must_choose_a_password(cli, store):
    """A token would answer nothing until the one-time password is replaced, and the new password would end it."""
    cli("users", "add", "cara", "--role", "clinician", "--password-stdin", input="amber-lantern-48\n")
    assert cli("users", "expire", "cara").exit_code == 0
    r = cli("tokens", "create", "cara")
    assert r.exit_code != 0 and "must choose a new password first" in r.output and "bw_" not in r.output
    cli("users", "passwd", "cara", "--password-stdin", input="amber-lantern-49\n")
    assert cli("tokens", "create", "cara").stdout.startswith("bw_")


@pytest.mark.slow
def test_init_creates_the_first_admin_once_with_a_one_time_password(tmp_path):
    inst = tmp_path / "inst"
    env = {"BUSI_WEB_INSTANCE_PATH": str(inst), "BUSI_WEB_AUTO_FIRST_RUN": "false"}
    first = run_cli("init", env=env)
    assert first.returncode == 0, first.stderr
    match = re.search(r"user 'admin', one-time password: (\S+)", first.stdout)
    assert match, first.stdout
    password = match.group(1)
    saved = inst / "ADMIN_PASSWORD.txt"
    assert saved.read_text() == f"admin: {password}\n" and oct(saved.stat().st_mode)[-3:] == "600"

    from busi_web.store import JobStore

    store = JobStore(inst / "busi.db", inst / "runs")
    user = store.check_password("admin", password)
    assert user["role"] == "admin" and user["must_change_password"] == 1
    second = run_cli("init", env=env)
    assert second.returncode == 0 and "one-time password" not in second.stdout
    assert store.count_users() == 1 and store.check_password("admin", password)


def test_users_role_disable_enable_reset_and_the_audit_command(cli, store):
    store.add_user("root", "admin", "amber-otter-99")
    store.add_user("ana", "clinician", "hollow-pepper-12")
    r = cli("users", "role", "ana", "admin")
    assert r.exit_code == 0 and "ana is now a admin" in r.output and store.get_user("ana")["role"] == "admin"
    assert cli("users", "disable", "ana").exit_code == 0 and store.check_password("ana", "hollow-pepper-12") is None
    assert cli("users", "enable", "ana").exit_code == 0 and store.check_password("ana", "hollow-pepper-12")
    r = cli("users", "role", "root", "clinician")
    assert r.exit_code == 0  # ana is an enabled admin too
    r = cli("users", "role", "ana", "clinician")
    assert r.exit_code == 1 and "last enabled admin" in r.output
    r = cli("users", "reset", "ana")
    password = r.stdout.strip().splitlines()[0]
    assert r.exit_code == 0 and store.check_password("ana", password)["must_change_password"] == 1
    r = cli("audit", "--user", "cli", "--action", "user.role", "--json")
    rows = json.loads(r.output)
    assert [(x["detail"]["target"], x["detail"]["role"]) for x in rows] == [("root", "clinician"), ("ana", "admin")]
    table = cli("audit", "--action", "user.disable", "--action", "user.enable", "--csv").output.splitlines()
    assert table[0] == "id,time,user,action,run_id,detail" and [ln.split(",")[3] for ln in table[1:]] == [
        "user.enable", "user.disable"]
    r = cli("audit", "--since", "last week")
    assert r.exit_code == 1 and "since must be a date" in r.output


def test_users_expire_requires_a_new_password_at_the_next_login(cli, store):
    cli("users", "add", "ana", "--role", "clinician", "--password-stdin", input="hollow-pepper-12\n")
    r = cli("users", "expire", "ana")
    assert r.exit_code == 0 and "must choose a new password" in r.output
    assert store.get_user("ana")["must_change_password"] == 1
    assert cli("users", "expire", "ghost").exit_code != 0
