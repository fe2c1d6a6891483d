"""What ends a user's sessions ends everything they hold: API tokens and open live connections; user names are
one policy on every path; login timing does not tell a name exists; long passphrases work."""

from __future__ import annotations

import statistics
import time

import pytest

from busi_web.errors import UserError
from busi_web.store.passwords import password_problem
from busi_web.store.users import check_user_name
from tests.helpers import finished_run, make_user_client, run_cli, wait_for

PASSWORD = "lilac-compass-73"


def _api(app, token: str, path: str = "/api/runs") -> int:
    return app.test_client().get(path, headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("event", ["reset", "require_new_password", "disable_enable", "role", "password"])
def test_a_token_ends_with_every_event_that_ends_the_sessions(app, event):
    store = app.extensions["busi_web"].store
    store.add_user("ana", "clinician", PASSWORD)
    store.add_user("boss", "admin", "copper-violet-35")
    token = store.create_token("ana", "script")
    assert _api(app, token) == 200
    if event == "reset":
        store.reset_password("ana", by="boss")
    elif event == "require_new_password":
        store.require_new_password("ana", by="boss")
    elif event == "disable_enable":
        store.set_disabled("ana", True, by="boss")
        store.set_disabled("ana", False, by="boss")  # enabling again does not bring the old token back
    elif event == "role":
        store.set_role("ana", "admin", by="boss")
    else:
        store.set_password("ana", "granite-puzzle-85")
    assert _api(app, token) == 401
    assert _api(app, store.create_token("ana", "new")) == (403 if event in ("reset", "require_new_password") else 200)


def test_a_plain_logout_ends_the_browser_session_not_the_scripts_token(app):
    store = app.extensions["busi_web"].store
    client = make_user_client(app, "ana", PASSWORD, "clinician")
    token = store.create_token("ana", "script")
    client.post("/logout")
    assert client.get("/api/me").status_code == 401 and _api(app, token) == 200


@pytest.mark.parametrize("event", ["disable", "logout", "role", "password"])
def test_a_live_connection_ends_when_its_session_ends(app, event):
    from busi_web.web.live import socketio

    store = app.extensions["busi_web"].store
    run = finished_run(store)
    store.add_metrics(run["id"], [{"epoch": 1, "key": "train_loss", "value": 0.5}])
    store.add_user("boss", "admin", "copper-violet-35")
    http = make_user_client(app, "ana", PASSWORD, "clinician")
    sock = socketio.test_client(app, flask_test_client=http)
    try:
        assert sock.is_connected()
        assert sock.emit("join_run", {"run_id": run["id"], "after_id": 0}, callback=True) == {"ok": True}
        sock.get_received()
        if event == "disable":
            store.set_disabled("ana", True, by="boss")
        elif event == "logout":
            http.post("/logout")
        elif event == "role":
            store.set_role("ana", "admin", by="boss")
        else:
            store.set_password("ana", "granite-puzzle-85")
        wait_for(lambda: not sock.is_connected(), timeout=5, what="the live connection to end")
        store.add_metrics(run["id"], [{"epoch": 2, "key": "train_loss", "value": 0.4}])
        time.sleep(0.6)  # two ticks of the pusher: nothing more reaches the ended connection
        assert not sock.is_connected()
    finally:
        if sock.is_connected():
            sock.disconnect()


@pytest.mark.parametrize("name", ["a/b", "nul\x00name", "zero\u200bwidth", "cl\u0131n", "space name", "-dash", "é"])
def test_user_names_outside_the_policy_are_refused_everywhere(app, name):
    store = app.extensions["busi_web"].store
    with pytest.raises(UserError, match="not allowed"):
        check_user_name(name)
    with pytest.raises(UserError, match="not allowed"):
        store.add_user(name, "clinician", PASSWORD)
    admin = make_user_client(app, "boss", "copper-violet-35", "admin")
    r = admin.post("/api/users", json={"name": name, "role": "clinician"})
    assert r.status_code == 400 and "not allowed" in r.get_json()["error"]


def test_names_are_one_account_whatever_their_case(app, tmp_path):
    store = app.extensions["busi_web"].store
    store.add_user("admin", "admin", PASSWORD)
    with pytest.raises(UserError, match="exists already"):
        store.add_user("ADMIN", "clinician", "granite-puzzle-85")
    assert check_user_name("ＡＤＭＩＮ") == "ADMIN"  # NFKC: full-width letters are the plain ones
    assert store.get_user("Admin")["name"] == "admin"
    # The command line follows the same policy.
    env = {"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance")}
    assert run_cli("init", env=env).returncode == 0
    r = run_cli("users", "add", "a/b", "--role", "clinician", env=env)
    assert r.returncode != 0 and "not allowed" in r.stderr and "Traceback" not in r.stderr


def test_long_passphrases_work_and_product_words_do_not():
    long = "amber otter granite puzzle lilac compass velvet cactus copper violet birch"  # 75 characters
    assert len(long) > 72 and password_problem(long, "ana") is None
    assert "product's own words" in password_problem("busiweb12345", "ana")
    assert "product's own words" in password_problem("breastcancer1", "ana")


def test_users_add_takes_an_80_character_passphrase_on_stdin(tmp_path):
    env = {"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "instance")}
    assert run_cli("init", env=env).returncode == 0
    phrase = "quiet harbour amber otter granite puzzle lilac compass velvet cactus copper 9191"
    assert len(phrase) == 80
    r = run_cli("users", "add", "dr.long", "--role", "clinician", "--password-stdin", input=phrase + "\n", env=env)
    assert r.returncode == 0, r.stderr


def test_login_takes_as_long_for_an_unknown_name_as_for_a_wrong_password(app):
    store = app.extensions["busi_web"].store
    store.add_user("ana", "clinician", PASSWORD)

    def seconds(name: str) -> float:
        start = time.perf_counter()
        store.check_password(name, "wrong-password-123")
        return time.perf_counter() - start

    seconds("warm-up")
    known, unknown = [], []
    for _ in range(15):  # interleaved, so that a slow moment of the machine hits both
        known.append(seconds("ana"))
        unknown.append(seconds("nobody-here"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.7 < ratio < 1.4, (statistics.median(known), statistics.median(unknown))
