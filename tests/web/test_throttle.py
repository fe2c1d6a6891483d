"""Login throttling: failures are counted per address and account and per address, so a stranger cannot lock a
colleague out; repeated failures on an account slow its answers down; an admin's reset lifts every count."""

from __future__ import annotations

import time

import pytest

from busi_web.web.throttle import MAX_DELAY_S, failure_delay
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


def test_a_stranger_cannot_lock_a_colleague_out(strict_app, monkeypatch):
    monkeypatch.setattr("busi_web.web.throttle.time.sleep", lambda _s: None)  # the slow-down is tested below
    client = strict_app.test_client()
    assert [attempt(client, "ana", address="10.6.6.6").status_code for _ in range(3)] == [401, 401, 401]
    refused = attempt(client, "ana", "quiet-harbour-91", address="10.6.6.6")
    text = refused.get_data(as_text=True)
    assert refused.status_code == 429 and "this account from this address" in text
    assert int(refused.headers["Retry-After"]) > 0
    # The account's owner, at her own address, logs in at once: the attacker's address is what is held back.
    assert attempt(client, "ANA", "quiet-harbour-91", address="10.0.0.2").status_code == 302
    store = strict_app.extensions["busi_web"].store
    assert len(store.audit_log("login.failed")) == 3
    throttled = store.audit_log("login.throttled")
    assert len(throttled) == 1 and throttled[0]["user"] == "ana" and throttled[0]["detail"]["ip"] == "10.6.6.6"


def test_an_admins_reset_lifts_the_limit(strict_app, monkeypatch):
    monkeypatch.setattr("busi_web.web.throttle.time.sleep", lambda _s: None)
    client = strict_app.test_client()
    for _ in range(3):
        attempt(client, "bob")
    assert attempt(client, "bob", "quiet-harbour-91").status_code == 429
    store = strict_app.extensions["busi_web"].store
    one_time = store.reset_password("bob", by="admin")
    assert attempt(client, "bob", one_time).status_code == 302  # the reset started every count of bob afresh


def test_an_address_is_held_back_after_failures_on_many_accounts(strict_app, monkeypatch):
    monkeypatch.setattr("busi_web.web.throttle.time.sleep", lambda _s: None)
    client = strict_app.test_client()
    statuses = [attempt(client, name).status_code for name in ("ana", "bob", "cy", "dan", "eve", "fay")]
    assert statuses == [401] * 6
    r = attempt(client, "gus")
    assert r.status_code == 429 and "too many failed logins for this address" in r.get_data(as_text=True)
    assert attempt(client, "bob", "quiet-harbour-91").status_code == 429  # the right password too
    assert attempt(client, "bob", "quiet-harbour-91", address="10.0.0.9").status_code == 302  # elsewhere: fine


def test_failures_on_one_account_slow_it_down_from_any_address(strict_app):
    assert [failure_delay(n) for n in (1, 2, 3, 4, 5)] == [0.0, 0.0, 0.25, 0.5, 1.0]
    assert failure_delay(30) == MAX_DELAY_S
    client = strict_app.test_client()
    timings = []
    for k in range(5):  # five addresses, one failure each: no address is held back, the account is slowed
        start = time.perf_counter()
        assert attempt(client, "cy", address=f"10.1.0.{k}").status_code == 401
        timings.append(time.perf_counter() - start)
    assert timings[4] >= 0.9 and timings[3] >= 0.45 and timings[0] < 0.4
    start = time.perf_counter()
    assert attempt(client, "cy", "quiet-harbour-91", address="10.1.0.9").status_code == 302  # never locked
    assert time.perf_counter() - start < 0.5  # and the right password is not slowed


def test_the_api_gets_json_and_a_successful_login_is_never_counted(strict_app, monkeypatch):
    monkeypatch.setattr("busi_web.web.throttle.time.sleep", lambda _s: None)
    client = strict_app.test_client()
    for _ in range(10):  # ten good logins in a row are not failures
        assert login(client, "ana", "quiet-harbour-91").status_code in (302, 200)
        client.post("/logout")
    for _ in range(3):
        attempt(client, "cy")
    r = client.post("/login", data={"username": "cy", "password": "x"}, headers={"Accept": "application/json"},
                    environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert r.status_code == 429 and r.is_json and "too many failed logins" in r.get_json()["error"]


def test_a_disabled_account_is_told_so_only_with_its_right_password(strict_app):
    client = strict_app.test_client()
    strict_app.extensions["busi_web"].store.set_disabled("bob", True, by="admin")
    right = attempt(client, "bob", "quiet-harbour-91")
    assert right.status_code == 403 and "this account is disabled" in right.get_data(as_text=True)
    wrong = attempt(client, "bob", "wrong-password")
    assert wrong.status_code == 401 and "disabled" not in wrong.get_data(as_text=True)


def test_with_the_shared_counters_out_of_reach_logins_go_on_and_are_still_limited(app_config, monkeypatch):
    from busi_web import create_app
    from tests.servers import free_port

    monkeypatch.setattr("busi_web.web.throttle.time.sleep", lambda _s: None)
    app = create_app({**app_config, "LOGIN_LIMIT_ACCOUNT": "3 per minute", "LOGIN_LIMIT_ADDRESS": "6 per minute",
                      "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    app.extensions["busi_web"].store.add_user("ana", "clinician", "quiet-harbour-91")
    client = app.test_client()
    assert attempt(client, "ana", "quiet-harbour-91").status_code == 302
    statuses = [attempt(app.test_client(), "ana", address="10.6.6.7").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]  # counted in this process's memory meanwhile
