"""Browser-test support: a real gunicorn on a free port, Debian's chromium through Playwright, login and forms.

Imported by ``test_browser.py`` (its fixtures too). Playwright never downloads a browser: without ``chromium``
on the PATH (``make chromium``) every browser test skips, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ADMIN, CLINICIAN, ROOT

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.skip("Debian's chromium is not installed (run `make chromium`, i.e. apt-get install chromium); "
                    "Playwright is never allowed to download a browser of its own")
    return path


@pytest.fixture(scope="module")
def server(chromium_path, tmp_path_factory):
    """gunicorn (``busi-web serve``) on a free port with a fresh instance, an admin and a clinician."""
    from busi_web.store import JobStore

    home = tmp_path_factory.mktemp("browser")
    instance = home / "instance"
    store = JobStore(instance / "busi.db", instance / "runs")
    store.add_user(ADMIN[0], "admin", ADMIN[1])
    store.add_user(CLINICIAN[0], "clinician", CLINICIAN[1])
    token = store.create_token(ADMIN[0], "browser tests")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update({"BUSI_WEB_INSTANCE_PATH": str(instance), "BUSI_WEB_AUTO_FIRST_RUN": "false",
                "BUSI_WEB_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})
    log = home / "server.log"
    exe = Path(sys.executable).with_name("busi-web")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--threads", "8"], env=env, cwd=home,
                                stdout=out, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", token, instance, proc, log)
    deadline = time.time() + 120
    while True:
        try:
            srv.api("/api/health")
            break
        except (OSError, urllib.error.URLError):
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("gunicorn did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.3)
    yield srv
    # Trainer processes this server started must not outlive the tests.
    for run in store.list_runs(status="running"):
        if run.get("pid"):
            try:
                os.killpg(run["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def new_page(browser, request):
    """A fresh browser context per test (no shared login); a screenshot is saved when the test ends."""
    contexts = []

    def make():
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        ctx.set_default_timeout(30_000)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    SHOTS.mkdir(parents=True, exist_ok=True)
    for i, ctx in enumerate(contexts):
        for j, p in enumerate(ctx.pages):
            p.screenshot(path=str(SHOTS / f"{request.node.name}_end_{i}{j}.png"), full_page=True)
        ctx.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(page, server: Server, user: tuple[str, str], next_path: str = "/"):
    """Log in through the login form; an anonymous visit to ``next_path`` must first land on the login page."""
    page.goto(server.url + next_path)
    assert "/login" in page.url, f"{next_path} did not ask for a login"
    page.fill("#username", user[0])
    page.fill("#password", user[1])
    page.click("#login-submit")
    page.wait_for_selector("#nav-user")
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
