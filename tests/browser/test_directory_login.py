"""Directory login end to end: a real slapd, a real gunicorn, Debian's chromium and the JSON API."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import pytest

from tests.browser_steps import browser_login
from tests.servers import LDAP_PEOPLE, served, slapd

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def directory_server(chromium_path, tmp_path_factory):
    home = tmp_path_factory.mktemp("directory-login")
    with slapd(home) as directory:
        env = {f"BUSI_WEB_{key}": str(value) for key, value in directory.settings().items()}
        with served(home / "web", env=env) as srv:
            yield srv


def test_a_directory_admin_logs_in_through_the_browser(directory_server, new_page):
    page = new_page()
    browser_login(page, directory_server, ("dr.lee", LDAP_PEOPLE["dr.lee"][0]))
    assert page.locator("nav a[href='/admin/users']").count() == 1  # an admin, from the directory's group
    page.goto(directory_server.url + "/admin/users")
    row = page.locator("tr[data-user='dr.lee']")
    assert row.count() == 1 and "directory" in row.inner_text()


def test_a_directory_clinician_logs_in_through_the_api(directory_server):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(directory_server.url + "/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": "nurse.kim", "password": LDAP_PEOPLE["nurse.kim"][0],
                                   "csrf_token": token}).encode()
    opener.open(directory_server.url + "/login", data=form)
    me = json.loads(opener.open(directory_server.url + "/api/me").read())
    assert me["name"] == "nurse.kim" and me["role"] == "clinician" and me["auth"] == "session"


def test_a_wrong_directory_password_is_refused_on_the_page(directory_server, new_page):
    page = new_page()
    page.goto(directory_server.url + "/login")
    page.fill("#username", "dr.lee")
    page.fill("#password", "not-the-password-1")
    page.click("#login-submit")
    assert "wrong user name or password" in page.inner_text("main")
