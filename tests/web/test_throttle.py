"""Login throttling: failed logins are counted per account and per client address; the limit answers 429."""

from __future__ import annotations

import pytest

from tests.helpers import login


@pytest.fixture
def strict_app(app_config):
    from busi_web import create_app

    app = create_app({**app_config, "LOGIN_LIMIT_ACCOUNT": "3 per minute", "LOGIN_LIMIT_ADDRESS": "6 per minute"})
    store = app.extensions["busi_web"].store
    for name in ("ana", "bob", "cy"):
        store.add_user(name, "clinician", "quiet-harbour-91")
    return app


def attempt(client, name: str, password: str = "wrong-password", address: str = "10.0.0.1"):
    return client.post("/login", data={"username": name, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def test_an_account_locks_after_its_failures_even_for_the_right_password(strict_app):
    client = strict_app.test_client()
    assert [attempt(client, "ana").status_code for _ in range(3)] == [401, 401, 401]
    refused = attempt(client, "ana", "quiet-harbour-91")
    text = refused.get_data(as_text=True)
    assert refused.status_code == 429 and "too many failed logins for this account" in text
    assert int(refused.headers["Retry-After"]) > 0
    # From another address too: the account is what is protected.
    assert attempt(client, "ANA", "quiet-harbour-91", address="10.0.0.2").status_code == 429
    # Another account from the same address is not locked, and a right password does not count.
    assert attempt(client, "bob", "quiet-harbour-91").status_code == 302
    store = strict_app.extensions["busi_web"].store
    assert len(store.audit_log("login.failed")) == 3
    throttled = store.audit_log("login.throttled")
    assert len(throttled) == 2 and throttled[0]["user"] == "ANA" and throttled[0]["detail"]["ip"] == "10.0.0.2"


def test_an_address_locks_after_failures_on_many_accounts(strict_app):
    client = strict_app.test_client()
    statuses = [attempt(client, name).status_code for name in ("ana", "bob", "cy", "dan", "eve", "fay")]
    assert statuses == [401] * 6
    r = attempt(client, "gus")
    assert r.status_code == 429 and "too many failed logins for this address" in r.get_data(as_text=True)
    assert attempt(client, "bob", "quiet-harbour-91").status_code == 429  # the right password too
    assert attempt(client, "bob", "quiet-harbour-91", address="10.0.0.9").status_code == 302  # elsewhere: fine


def test_the_api_gets_json_and_a_successful_login_is_never_counted(strict_app):
    client = strict_app.test_client()
    for _ in range(10):  # ten good logins in a row are not failures
        assert login(client, "ana", "quiet-harbour-91").status_code in (302, 200)
        client.post("/logout")
    for _ in range(3):
        attempt(client, "cy")
    r = client.post("/login", data={"username": "cy", "password": "x"}, headers={"Accept": "application/json"},
                    environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert r.status_code == 429 and r.is_json and "too many failed logins" in r.get_json()["error"]
