"""Directory login against a real OpenLDAP (Debian's slapd on 127.0.0.1): groups decide roles, local accounts
keep working, and a directory that is down or silent gives a clear 503, not a hang."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import ADMIN, login
from tests.servers import LDAP_ADMINS, LDAP_CLINICIANS, LDAP_PEOPLE, free_port, slapd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    with slapd(tmp_path_factory.mktemp("ldap")) as server:
        yield server


def person(name: str) -> tuple[str, str]:
    return name, LDAP_PEOPLE[name][0]


def test_directory_users_log_in_with_the_role_of_their_group(directory, make_app):
    app = make_app(**directory.settings())
    store = app.extensions["busi_web"].store
    lee, kim = app.test_client(), app.test_client()
    assert login(lee, *person("dr.lee")).status_code == 302
    assert login(kim, *person("nurse.kim")).status_code == 302
    assert lee.get("/api/me").get_json()["role"] == "admin" and lee.get("/api/users").status_code == 200
    assert kim.get("/api/me").get_json()["role"] == "clinician" and kim.get("/api/users").status_code == 403
    assert store.get_user("dr.lee")["source"] == "directory"
    assert not store.check_password("dr.lee", LDAP_PEOPLE["dr.lee"][0])  # no local password is kept
    # Wrong password, unknown name, an empty password (an anonymous bind would "succeed"), LDAP filter tricks.
    for name, password in (("dr.lee", "wrong-password-1"), ("ghost", "whatever-pass-12"), ("dr.lee", ""),
                           ("*", "copper-violet-33"), ("dr.lee)(uid=*", "copper-violet-33")):
        assert login(app.test_client(), name, password).status_code == 401, name
    # In the directory but in neither group: refused, saying why.
    r = login(app.test_client(), *person("visitor.ray"))
    assert r.status_code == 403 and "is in none of busi-web" in r.get_data(as_text=True)
    assert store.get_user("visitor.ray") is None
    # The local admin keeps working; the directory's "admin" cannot take over the local account.
    assert login(app.test_client(), *ADMIN).status_code == 302
    assert login(app.test_client(), *person("admin")).status_code == 401
    # The directory owns these passwords and roles.
    r = lee.post("/account/password", data={"current_password": LDAP_PEOPLE["dr.lee"][0],
                                            "new_password": "granite-puzzle-85",
                                            "confirm_password": "granite-puzzle-85"})
    assert r.status_code == 400 and "managed by the hospital directory" in r.get_data(as_text=True)
    assert lee.patch("/api/users/nurse.kim", json={"role": "admin"}).status_code == 409
    assert lee.post("/api/users/nurse.kim/reset-password").status_code == 409
    actions = [a["action"] for a in store.audit_log()]
    assert actions.count("login") == 3 and "login.refused" in actions and "login.failed" in actions


def test_a_group_change_applies_at_the_next_login_and_ends_old_sessions(directory, make_app):
    app = make_app(**directory.settings())
    kim = app.test_client()
    login(kim, *person("nurse.kim"))
    assert kim.get("/api/me").get_json()["role"] == "clinician"
    directory.move("nurse.kim", LDAP_CLINICIANS, LDAP_ADMINS)
    try:
        again = app.test_client()
        assert login(again, *person("nurse.kim")).status_code == 302
        assert again.get("/api/me").get_json()["role"] == "admin"
        assert kim.get("/api/me").status_code == 401  # the clinician session ended with the role change
    finally:
        directory.move("nurse.kim", LDAP_ADMINS, LDAP_CLINICIANS)


def test_a_disabled_directory_user_stays_out(directory, make_app):
    app = make_app(**directory.settings())
    assert login(app.test_client(), *person("nurse.kim")).status_code == 302
    store = app.extensions["busi_web"].store
    store.set_disabled("nurse.kim", True, by="admin")
    assert login(app.test_client(), *person("nurse.kim")).status_code == 401
    # The directory's own name, not the one typed: Nurse.Kim is nurse.kim, and stays disabled.
    users = store.count_users()
    assert login(app.test_client(), "Nurse.Kim", LDAP_PEOPLE["nurse.kim"][0]).status_code == 401
    assert store.count_users() == users and store.get_user("Nurse.Kim")["name"] == "nurse.kim"


def test_directory_names_never_make_a_second_account_beside_a_local_one(directory, make_app):
    app = make_app(**directory.settings())
    store = app.extensions["busi_web"].store
    users = store.count_users()
    for typed in ("ADMIN", "Admin", "admin"):
        assert login(app.test_client(), typed, LDAP_PEOPLE["admin"][0]).status_code == 401, typed
    assert store.count_users() == users and store.get_user("ADMIN")["source"] == "local"


def test_a_directory_that_is_down_or_silent_gives_a_clear_503_and_local_logins_go_on(directory, make_app):
    closed = free_port()  # nothing listens there
    silent = socket.socket()  # accepts connections (the backlog) but never answers a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for url in (f"ldap://127.0.0.1:{closed}", f"ldap://127.0.0.1:{silent.getsockname()[1]}"):
            app = make_app(**directory.settings(LDAP_URL=url, LDAP_TIMEOUT=1))
            started = time.monotonic()
            r = login(app.test_client(), *person("dr.lee"))
            waited = time.monotonic() - started
            text = r.get_data(as_text=True)
            assert r.status_code == 503 and "the hospital directory" in text and "does not answer" in text, url
            assert url not in text and "local accounts can still log in" in text  # no address for anonymous
            assert waited < 15, f"{url}: the login page hung for {waited:.0f} s"  # bounded by LDAP_TIMEOUT, not hung
            assert login(app.test_client(), *ADMIN).status_code == 302
    finally:
        silent.close()


@pytest.mark.parametrize(("settings", "message"), [
    ({"LDAP_URL": "http://dir"}, "LDAP_URL must be ldap://"),
    ({"LDAP_URL": "ldap://dir"}, "LDAP_USER_BASE is required"),
    ({"LDAP_URL": "ldap://dir", "LDAP_USER_BASE": "ou=people"}, "LDAP_ADMIN_GROUP"),
    ({"LDAP_URL": "ldap://dir", "LDAP_USER_BASE": "ou=p", "LDAP_ADMIN_GROUP": "cn=a", "LDAP_USER_FILTER": "(uid=x)"},
     "{username}"),
])
def test_wrong_directory_settings_stop_the_start_with_their_name(make_app, settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_app(**settings)
