"""Browser-test fixtures: a real gunicorn on a free port, and Debian's chromium through Playwright.

Playwright never downloads a browser: without ``chromium`` on the PATH
(``make chromium``) every browser test skips, saying so. The steps the tests
take (log in, fill the train form, ...) are in ``tests/browser_steps.py``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.browser_steps import SHOTS
from tests.servers import served


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
    with served(tmp_path_factory.mktemp("browser")) as srv:
        yield srv


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
    """A fresh browser context per test (no shared login); a screenshot is saved when the test ends, and the test
    fails when the page broke the content security policy (an inline script or style, a foreign source)."""
    contexts = []
    violations: list[str] = []

    def make():
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        ctx.set_default_timeout(30_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("console", lambda msg: violations.append(f"{page.url}: {msg.text}")
                if "Content Security Policy" in msg.text else None)
        return page

    yield make
    SHOTS.mkdir(parents=True, exist_ok=True)
    for i, ctx in enumerate(contexts):
        for j, p in enumerate(ctx.pages):
            p.screenshot(path=str(SHOTS / f"{request.node.name}_end_{i}{j}.png"), full_page=True)
        ctx.close()
    assert not violations, "the content security policy was broken:\n" + "\n".join(violations)


