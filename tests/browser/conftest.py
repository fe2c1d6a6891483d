"""Browser-test fixtures: a real gunicorn on a free port, and Debian's chromium through Playwright.

Playwright never downloads a browser: without ``chromium`` on the PATH
(``make chromium``) every browser test skips, saying so. The steps the tests
take (log in, fill the train form, ...) are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ADMIN, CLINICIAN, SHOTS, Server


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


