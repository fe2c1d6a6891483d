"""The browser tests' steps: the served instance, screenshots, logging in, the Train page's form and charts.

The fixtures (a real gunicorn, Debian's chromium through Playwright) are in
``browser/conftest.py``; test modules import these steps from here.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

# -- the browser tests (Playwright on Debian's chromium; the fixtures are in browser/conftest.py) --------------


SHOTS = ROOT / "test-artifacts" / "browser"


# A run the API can start when a test needs a finished model and the earlier tests did not leave one.
TINY_RUN = {"backbone": "tiny_cnn", "dataset": "phantom", "name": "api tiny",
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.003, "input_size": 32, "resize": 36, "device": "cpu",
                      "workers": 0, "seed": 1},
            "dataset_params": {"size": 48, "per_class": 16, "seed": 2}}


@dataclass
class Server:
    url: str
    token: str
    instance: Path
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        """Call the JSON API with the admin's API token (token requests need no CSRF token)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# What the Train page's charts hold, read in the browser: the run's status and the points of each chart.
CHART_STATE = """() => {
  const count = (name) => {
    const c = (window.busiCharts || {})[name];
    return c ? Object.fromEntries(c.data.datasets.map((d) => [d.busiKey, d.data.length])) : null;
  };
  const run = window.busiRun || {};
  return {status: run.status, live: run.liveRows, rest: run.restRows, epochs: run.epochsDone,
          loss: count("loss"), accuracy: count("accuracy"), batch: count("batch")};
}"""


def total(sample: dict) -> int:
    """The points of a CHART_STATE sample, all charts together."""
    return sum(sum((sample[k] or {}).values()) for k in ("loss", "accuracy", "batch"))


def browser_login(page, server: Server, user: tuple[str, str], next_path: str = "/"):
    """Log in through the login form; an anonymous visit to ``next_path`` must first land on the login page."""
    page.goto(server.url + next_path)
    assert "/login" in page.url, f"{next_path} did not ask for a login"
    page.fill("#username", user[0])
    page.fill("#password", user[1])
    page.click("#login-submit")
    page.wait_for_selector("#nav-user")
    # The page's own scripts attach their listeners before DOMContentLoaded: wait for it, or an early
    # select_option/click can fire before anything listens (a CI run lost a filter change that way).
    page.wait_for_load_state("domcontentloaded")
    assert user[0] in page.inner_text("#nav-user")


def wait_runs(server: Server, finished: int, timeout: float = 150) -> list[dict]:
    """At least ``finished`` finished runs (starting tiny ones through the API when there are too few)."""
    have = server.api("/api/runs?status=finished")["runs"]
    busy = server.api("/api/runs?status=queued,running")["runs"]
    for _ in range(finished - len(have) - len(busy)):
        server.api("/api/runs", TINY_RUN)
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = server.api("/api/runs?status=finished")["runs"]
        if len(runs) >= finished and not server.api("/api/runs?status=queued,running")["runs"]:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"fewer than {finished} finished runs after {timeout} s: "
                         f"{server.api('/api/runs')['runs']}\n{server.log.read_text()[-2000:]}")


def default_model(server: Server, run_id: int | None = None) -> int:
    """Make run ``run_id`` (default: the first finished run) the default of its modality, as an admin does on the
    Models page: clinicians diagnose with the defaults and accepted models only. Returns the run's id."""
    if run_id is None:
        run_id = wait_runs(server, 1)[0]["id"]
    server.api(f"/api/runs/{run_id}/promote", {"reason": "the browser tests' model"})
    return run_id


def fill_train_form(page, server: Server, *, name: str, epochs: str, per_class: int = 24, resize: str = "36"):
    page.goto(server.url + "/train")
    page.wait_for_selector("#train[data-ready='1']")
    page.fill("#f-name", name)
    page.select_option("#f-backbone", "tiny_cnn")
    page.select_option("#f-dataset", "phantom")
    page.fill("#f-dataset_params-size", "48")
    page.fill("#f-dataset_params-per_class", str(per_class))
    page.fill("#f-train-epochs", epochs)
    page.fill("#f-train-batch_size", "8")
    page.fill("#f-train-lr", "0.003")
    if not page.locator("#advanced").evaluate("d => d.open"):
        page.click("#advanced summary")
    page.fill("#f-train-input_size", "32")
    page.fill("#f-train-resize", resize)
    page.fill("#f-train-device", "cpu")
    page.fill("#f-train-workers", "0")
    page.fill("#f-train-patience", "0")


def submit_train_form(page) -> int:
    page.click("#train-submit")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])
