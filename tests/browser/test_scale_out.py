"""Two busi-web instances (two gunicorns on two ports, as two hosts behind a proxy would be) on one PostgreSQL and
one Redis: a browser on one watches a run the other started and trains, a logout on one ends the same session's
live channel on the other, and failed logins spread over both count against one limit."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.browser_steps import CHART_STATE, browser_login, total
from tests.helpers import ADMIN, wait_for
from tests.servers import redis_server, served

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN = {"backbone": "tiny_cnn", "dataset": "phantom", "name": "started on B",
       "dataset_params": {"size": 64, "per_class": 40, "seed": 2},
       "train": {"epochs": 6, "batch_size": 8, "lr": 3e-3, "input_size": 48, "resize": 56, "device": "cpu",
                 "workers": 0, "patience": 0, "seed": 2}}


def failed_login(server_url: str, name: str) -> int:
    """One wrong password posted to the login form of ``server_url`` (CSRF token from the form): the status."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(server_url + "/login", timeout=30) as page:
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode()).group(1)
    body = urllib.parse.urlencode({"username": name, "password": "not-the-password-1", "csrf_token": token}).encode()
    try:
        with opener.open(urllib.request.Request(server_url + "/login", data=body), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def two_instances(chromium_path, pg_cluster, tmp_path_factory):
    home = tmp_path_factory.mktemp("scale-out")
    with redis_server(home / "redis") as redis:
        shared = {"BUSI_WEB_DATABASE_URL": pg_cluster.new_database(), "BUSI_WEB_REDIS_URL": redis.url,
                  "BUSI_WEB_RUNS_DIR": str(home / "shared-runs"), "BUSI_WEB_SECRET_KEY": "one-key-for-every-host",
                  "BUSI_WEB_LIVE_POLL_SECONDS": "0.2"}
        # A trains nothing (as a web host with TRAINERS=remote); B trains what is queued.
        with served(home / "a", env={**shared, "BUSI_WEB_TRAINERS": "remote"}) as a, \
                served(home / "b", env={**shared, "BUSI_WEB_TRAINERS": "local"}) as b:
            yield a, b


def test_a_browser_on_a_watches_bs_run_live_and_a_logout_on_a_ends_its_live_channel_on_b(two_instances, browser):
    a, b = two_instances
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        on_a = context.new_page()
        browser_login(on_a, a, ADMIN, "/runs")
        run_id = b.api("/api/runs", RUN)["id"]
        on_a.goto(f"{a.url}/runs/{run_id}")
        samples, deadline = [], time.time() + 180
        while time.time() < deadline:
            sample = on_a.evaluate(CHART_STATE)
            samples.append(sample)
            if sample["status"] in ("finished", "failed"):
                break
            time.sleep(0.1)
        assert samples[-1]["status"] == "finished", (samples[-1], b.log.read_text()[-3000:])
        growth = sorted({total(s) for s in samples if s["status"] not in ("finished", None)})
        assert len(growth) >= 2 and samples[-1]["live"] > 0, samples[::10]  # points pushed live, on A

        # The same session (one cookie, as behind a proxy) watching on B: a logout on A ends B's channel.
        second = b.api("/api/runs", {**RUN, "name": "watched on B", "train": {**RUN["train"], "epochs": 30}})["id"]
        on_b = context.new_page()
        on_b.goto(f"{b.url}/runs/{second}")
        wait_for(lambda: on_b.inner_text("#run-live") == "connected", timeout=60, what="B's live channel")
        on_a.goto(f"{a.url}/runs")
        on_a.click("#logout")
        on_a.wait_for_url(re.compile(r"/login"))
        wait_for(lambda: on_b.inner_text("#run-live") != "connected", timeout=15,
                 what="B to end the live channel of the session that logged out on A")
        time.sleep(2)  # and it does not come back: a reconnect with the ended session is refused
        assert on_b.inner_text("#run-live") != "connected"
        b.api(f"/api/runs/{second}/cancel", {})
    finally:
        context.close()


def test_failed_logins_spread_over_both_instances_hit_one_limit(two_instances):
    a, b = two_instances
    # LOGIN_LIMIT_ACCOUNT is 5 per minute: five failures, alternating A, B, A, B, A, and the sixth is refused
    # wherever it goes; alone, neither instance has seen more than three.
    statuses = [failed_login((a, b)[i % 2].url, "clin") for i in range(5)]
    assert statuses == [401] * 5, statuses
    assert failed_login(b.url, "clin") == 429
    assert failed_login(a.url, "clin") == 429
