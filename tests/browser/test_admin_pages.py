"""The admin pages in a real browser: accounts (add with a one-time password, change a role, disable, reset) and
the audit log (filters and the CSV export)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.browser_steps import browser_login as login
from tests.browser_steps import shot
from tests.helpers import ADMIN

pytestmark = pytest.mark.browser


def test_an_admin_adds_disables_and_resets_an_account(server, new_page):
    page = new_page()
    login(page, server, ADMIN, "/admin/users")
    page.fill("#new-name", "dr.ward")
    page.select_option("#new-role", "clinician")
    page.click("#add-user-submit")
    page.wait_for_selector("#one-time-password")
    password = page.inner_text("#one-time-password")
    assert page.locator("tr[data-user='dr.ward']").count() == 1
    shot(page, "users_added")

    # The new user logs in with it and is sent to choose their own password first.
    other = new_page()
    other.goto(server.url + "/login")
    other.fill("#username", "dr.ward")
    other.fill("#password", password)
    other.click("#login-submit")
    other.wait_for_url("**/account/password**")

    # Disabled: their open page loses its session at once.
    page.reload()
    page.once("dialog", lambda d: d.accept())
    page.locator("tr[data-user='dr.ward'] button[data-act='disable']").click()
    page.wait_for_selector("tr[data-user='dr.ward'][data-disabled='1']")
    other.goto(server.url + "/diagnose")
    assert "/login" in other.url

    # Enabled again, made an admin, and given a new one-time password.
    page.locator("tr[data-user='dr.ward'] button[data-act='enable']").click()
    page.wait_for_selector("tr[data-user='dr.ward'][data-disabled='0']")
    page.select_option("tr[data-user='dr.ward'] select.role", "admin")
    page.wait_for_selector("tr[data-user='dr.ward'][data-role='admin']")
    page.once("dialog", lambda d: d.accept())
    page.locator("tr[data-user='dr.ward'] button[data-act='reset']").click()
    page.wait_for_selector("#one-time-password")
    assert page.inner_text("#one-time-password") != password
    # An admin cannot lock themselves out.
    page.once("dialog", lambda d: d.accept())
    page.locator(f"tr[data-user='{ADMIN[0]}'] button[data-act='disable']").click()
    page.wait_for_selector("#users-error:not([hidden])")
    assert "your own account" in page.inner_text("#users-error")


def test_the_audit_page_filters_and_exports_what_it_shows(server, new_page):
    page = new_page()
    login(page, server, ADMIN, "/admin/audit")
    assert page.locator("#audit-table tbody tr[data-id]").count() >= 1
    page.select_option("#f-action", "login")
    page.select_option("#f-user", ADMIN[0])
    page.click("#audit-apply")
    page.wait_for_url("**action=login**")
    rows = page.locator("#audit-table tbody tr[data-id]")
    assert rows.count() >= 1
    assert set(rows.evaluate_all("rs => rs.map((r) => r.dataset.action + ' ' + r.dataset.user)")) == {
        f"login {ADMIN[0]}"}
    page.fill("#f-until", "2000-01-01")
    page.click("#audit-apply")
    page.wait_for_selector("#audit-empty")
    page.fill("#f-until", "")
    page.click("#audit-apply")
    page.wait_for_selector("#audit-table tbody tr[data-id]")
    with page.expect_download() as download:
        page.click("#audit-csv")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["id", "time", "user", "action", "run_id", "detail"]
    assert len(table) - 1 == page.locator("#audit-table tbody tr[data-id]").count()
    assert {row[3] for row in table[1:]} == {"login"}
    shot(page, "audit_filtered")
