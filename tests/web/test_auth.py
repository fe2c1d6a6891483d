"""Login, logout, sessions, API tokens, the one-time password flow and Socket.IO's login check."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from busi_web.web.auth import safe_next
from tests.helpers import login, make_user_client


@pytest.fixture
def csrf_app(app_config):
    from busi_web import create_app

    return create_app({**app_config, "WTF_CSRF_ENABLED": True})


def csrf_token_of(client, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_login_page_has_the_fields_and_a_csrf_token(csrf_app):
    page = csrf_app.test_client().get("/login?next=/runs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    for name in ("username", "password", "next", "csrf_token"):
        assert f'name="{name}"' in html
    assert 'value="/runs"' in html


def test_wrong_password_and_unknown_user_get_the_same_answer_and_are_audited(app, store):
    store.add_user("ana", "clinician", "lilac-compass-73")
    client = app.test_client()
    wrong = client.post("/login", data={"username": "ana", "password": "nope-nope"})
    unknown = client.post("/login", data={"username": "ghost", "password": "nope-nope"})
    for r in (wrong, unknown):
        assert r.status_code == 401 and "wrong user name or password" in r.get_data(as_text=True)
    assert client.get("/api/me").status_code == 401
    assert [a["user"] for a in store.audit_log("login.failed")] == ["ghost", "ana"]


def test_login_goes_to_next_but_never_to_another_site(app, store):
    store.add_user("ana", "clinician", "lilac-compass-73")
    r = login(app.test_client(), "ana", "lilac-compass-73", next_url="/api/me?x=1")
    assert r.status_code == 302 and r.headers["Location"] == "/api/me?x=1"
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        r = login(app.test_client(), "ana", "lilac-compass-73", next_url=evil)
        assert r.headers["Location"] == "/", evil
    assert safe_next("/runs/3?tab=log") == "/runs/3?tab=log" and safe_next(None, "/x") == "/x"
    assert store.audit_log("login")[0]["user"] == "ana"


def test_a_page_redirects_to_login_with_next_and_comes_back(app, store):
    store.add_user("ana", "clinician", "lilac-compass-73")
    client = app.test_client()
    r = client.get("/api/runs?status=finished", headers={"Accept": "text/html"})
    assert r.status_code == 401  # /api answers JSON even to a browser
    r = client.get("/?tab=1")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    assert parse_qs(urlsplit(r.headers["Location"]).query)["next"] == ["/?tab=1"]
    r = login(client, "ana", "lilac-compass-73", next_url="/?tab=1")
    assert r.headers["Location"] == "/?tab=1"
    assert client.get("/login").status_code == 302  # already logged in


def test_logout_needs_post_with_csrf_and_ends_the_session(csrf_app):
    client = make_user_client(csrf_app, "ana", "lilac-compass-73", "clinician")
    assert client.get("/api/me").get_json()["name"] == "ana"
    assert client.get("/logout").status_code == 405
    refused = client.post("/logout")
    assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)
    assert client.get("/api/me").status_code == 200
    token = csrf_token_of(client, "/account/password")
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert client.get("/api/me").status_code == 401


def test_session_cookie_is_httponly_and_samesite(app, store):
    store.add_user("ana", "clinician", "lilac-compass-73")
    r = login(app.test_client(), "ana", "lilac-compass-73")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_api_tokens_authenticate_without_session_or_csrf_and_can_be_revoked(csrf_app):
    store = csrf_app.extensions["busi_web"].store
    store.add_user("bot", "admin", "silver-meadow-26")
    token = store.create_token("bot", "ci")
    client = csrf_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    r = client.get("/api/me", headers=headers)
    assert r.get_json() == {"name": "bot", "role": "admin", "is_admin": True, "auth": "token",
                            "must_change_password": False}
    assert "Set-Cookie" not in r.headers  # a token never turns into a session
    assert client.get("/api/me").status_code == 401
    # A state-changing request with a token needs no CSRF token (browsers never send this header on their own).
    r = client.post("/api/runs", json={"backbone": "tiny_cnn"}, headers=headers)
    assert r.status_code == 400 and r.get_json()["fields"] == {"dataset": "required"}
    assert store.list_tokens("bot")[0]["last_used_at"]
    store.revoke_token(store.list_tokens("bot")[0]["id"])
    r = client.get("/api/me", headers=headers)
    assert r.status_code == 401 and "revoked" in r.get_json()["error"]
    r = client.get("/api/me", headers={"Authorization": "Bearer bw_made_up"})
    assert r.status_code == 401


def test_a_deleted_user_is_logged_out(app, store):
    client = make_user_client(app, "ana", "lilac-compass-73", "clinician")
    store.add_user("boss", "admin", "copper-violet-33")
    store.delete_user("ana")
    assert client.get("/api/me").status_code == 401


def test_one_time_password_leads_to_the_password_page_and_the_file_goes(app, store, instance_path):
    store.add_user("admin", "admin", "birch-kettle-7", must_change_password=True)
    secret = instance_path / "ADMIN_PASSWORD.txt"
    secret.write_text("admin: one-time-pw\n")
    client = app.test_client()
    r = login(client, "admin", "birch-kettle-7", next_url="/api/me")
    assert r.status_code == 302 and r.headers["Location"].startswith("/account/password")
    assert client.get("/api/me").get_json()["must_change_password"] is True
    # Until it is changed, a one-time password opens nothing else.
    r = client.get("/?x=1")
    assert r.status_code == 302 and r.headers["Location"].startswith("/account/password?next=")
    r = client.get("/api/runs")
    assert r.status_code == 403 and "one-time password" in r.get_json()["error"]
    bad = client.post("/account/password", data={"current_password": "wrong", "new_password": "granite-puzzle-85",
                                                  "confirm_password": "granite-puzzle-85"})
    assert bad.status_code == 400 and "current password is wrong" in bad.get_data(as_text=True)
    differ = client.post("/account/password", data={"current_password": "birch-kettle-7",
                                                    "new_password": "granite-puzzle-85", "confirm_password": "x"})
    assert differ.status_code == 400 and "differ" in differ.get_data(as_text=True)
    short = client.post("/account/password", data={"current_password": "birch-kettle-7", "new_password": "short",
                                                   "confirm_password": "short"})
    assert short.status_code == 400 and "at least 12" in short.get_data(as_text=True)
    assert secret.exists()
    ok = client.post("/account/password", data={"current_password": "birch-kettle-7",
                                                "new_password": "granite-puzzle-85",
                                                "confirm_password": "granite-puzzle-85", "next": "/api/me"})
    assert ok.status_code == 302 and ok.headers["Location"] == "/api/me"
    assert not secret.exists()
    assert store.check_password("admin", "granite-puzzle-85") and not store.check_password("admin", "birch-kettle-7")
    assert client.get("/api/me").get_json()["must_change_password"] is False
    assert client.get("/api/runs").status_code == 200


def test_socketio_refuses_anonymous_clients_and_accepts_users(app, store):
    from busi_web.web.live import socketio

    anonymous = socketio.test_client(app, flask_test_client=app.test_client())
    assert not anonymous.is_connected()
    client = make_user_client(app, "ana", "lilac-compass-73", "clinician")
    user = socketio.test_client(app, flask_test_client=client)
    try:
        assert user.is_connected()
    finally:
        user.disconnect()


def test_old_session_cookies_stop_working_after_logout_password_and_role_changes(app):
    """A session cookie saved earlier (another device, a stolen copy) is replayed after each event: 401."""
    from tests.helpers import make_user_client

    store = app.extensions["busi_web"].store
    admin = make_user_client(app, "boss", "copper-violet-35", "admin")

    def replay(cookie: str) -> int:
        other = app.test_client()
        other.set_cookie("session", cookie)
        return other.get("/api/me").status_code

    def saved(client) -> str:
        return client.get_cookie("session").value

    # Logout ends every session of the user, not only the one that logged out.
    first, second = (make_user_client(app, "ana", "quiet-harbour-91", "clinician") for _ in range(2))
    old = saved(first)
    assert replay(old) == 200
    second.post("/logout")
    assert replay(old) == 401 and first.get("/api/me").status_code == 401
    # A password change ends the others; the session that changed it goes on.
    changer, bystander = (make_user_client(app, "ana", "quiet-harbour-91", "clinician") for _ in range(2))
    r = changer.post("/account/password", data={"current_password": "quiet-harbour-91",
                                                "new_password": "quiet-inlet-92", "confirm_password": "quiet-inlet-92"})
    assert r.status_code == 302
    assert changer.get("/api/me").status_code == 200 and bystander.get("/api/me").status_code == 401
    # A role change and disabling, by an admin, end the user's sessions.
    user = make_user_client(app, "ana", "quiet-inlet-92", "clinician")
    old = saved(user)
    assert admin.patch("/api/users/ana", json={"role": "admin"}).status_code == 200
    assert replay(old) == 401
    user = make_user_client(app, "ana", "quiet-inlet-92", "clinician")
    old = saved(user)
    assert admin.patch("/api/users/ana", json={"disabled": True}).status_code == 200
    assert admin.patch("/api/users/ana", json={"disabled": False}).status_code == 200
    assert replay(old) == 401  # enabling again does not bring old sessions back
    assert store.get_user("ana")["session_version"] >= 5


@pytest.mark.parametrize(("password", "problem"), [
    ("short-one", "at least 12 characters (it has 9)"),
    ("password1234", "most common passwords"),  # a common password with digits added
    ("!!baseball2024", "most common passwords"),
    ("ana-lilac-compass", "must not contain the user name"),
    ("aaaaaaaaaaaaaa", "too easy to guess"),
    ("123456789012", "too easy to guess"),
])
def test_weak_passwords_are_refused_with_the_rule_they_break(app, store, password, problem):
    client = make_user_client(app, "ana", "quiet-harbour-91", "clinician")
    r = client.post("/account/password", data={"current_password": "quiet-harbour-91", "new_password": password,
                                                "confirm_password": password})
    assert r.status_code == 400 and problem in r.get_data(as_text=True)
    assert store.check_password("ana", "quiet-harbour-91")  # nothing changed
    with pytest.raises(Exception, match=re.escape(problem)):
        store.add_user("ana2" if "ana" not in password else "ana", "clinician", password)


def test_the_rules_accept_long_unrelated_words_and_the_generated_passwords():
    from busi_web.store.passwords import common_passwords, one_time_password, password_problem

    assert len(common_passwords()) >= 29_000 and "password" in common_passwords()
    assert password_problem("velvet cactus harbour", "ana") is None
    assert all(password_problem(one_time_password()) is None for _ in range(20))


def test_an_admin_can_require_a_new_password_at_the_next_login(app, store):
    admin = make_user_client(app, "boss", "copper-violet-35", "admin")
    user = make_user_client(app, "ana", "quiet-harbour-91", "clinician")
    r = admin.patch("/api/users/ana", json={"must_change_password": True})
    assert r.status_code == 200 and r.get_json()["user"]["must_change_password"]
    assert user.get("/api/me").status_code == 401  # the session ended
    assert admin.patch("/api/users/ana", json={"must_change_password": False}).status_code == 400
    # The current password still logs in, but opens only the change-password page.
    again = app.test_client()
    r = login(again, "ana", "quiet-harbour-91")
    assert r.status_code == 302 and r.headers["Location"].startswith("/account/password")
    assert again.get("/api/runs").status_code == 403
    same = again.post("/account/password", data={"current_password": "quiet-harbour-91",
                                                  "new_password": "quiet-harbour-91",
                                                  "confirm_password": "quiet-harbour-91"})
    assert same.status_code == 400 and "differ from the current one" in same.get_data(as_text=True)
    r = again.post("/account/password", data={"current_password": "quiet-harbour-91",
                                               "new_password": "quiet-inlet-92", "confirm_password": "quiet-inlet-92"})
    assert r.status_code == 302 and again.get("/api/runs").status_code == 200
    assert [a["detail"]["target"] for a in store.audit_log("user.password.require_change")] == ["ana"]
