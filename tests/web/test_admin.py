"""Admin pages and their API: accounts (add, role, disable, reset password) and the audit log (filters, CSV)."""

from __future__ import annotations

import csv
import io

from tests.helpers import ADMIN, CLINICIAN, login


def test_an_admin_adds_a_user_who_must_change_the_one_time_password(app, store, admin_client):
    r = admin_client.post("/api/users", json={"name": "dr.lee", "role": "clinician"})
    assert r.status_code == 201
    body = r.get_json()
    assert body["user"]["name"] == "dr.lee" and "password_hash" not in body["user"]
    client = app.test_client()
    assert login(client, "dr.lee", body["one_time_password"]).status_code == 302
    r = client.get("/api/runs")
    assert r.status_code == 403 and "one-time password" in r.get_json()["error"]  # to be changed first
    assert admin_client.post("/api/users", json={"name": "dr.lee", "role": "clinician"}).status_code == 409  # taken
    r = admin_client.post("/api/users", json={"name": "x y", "role": "clinician"})
    assert r.status_code == 400 and "no spaces" in r.get_json()["error"]
    r = admin_client.post("/api/users", json={"name": "z", "role": "root"})
    assert r.status_code == 400 and "unknown role" in r.get_json()["error"]
    newest = store.audit_log("user.add", user="admin", limit=1)[0]
    assert newest["detail"] == {"target": "dr.lee", "role": "clinician"}


def test_disabling_ends_the_sessions_and_tokens_at_once_and_enabling_restores_login(app, store, admin_client,
                                                                                    clinician_client):
    token = store.create_token(CLINICIAN[0], "script")
    assert clinician_client.get("/api/me").status_code == 200
    r = admin_client.patch(f"/api/users/{CLINICIAN[0]}", json={"disabled": True})
    assert r.status_code == 200 and r.get_json()["user"]["disabled"] is True
    assert clinician_client.get("/api/me").status_code == 401  # the saved session cookie no longer works
    assert app.test_client().get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert login(app.test_client(), *CLINICIAN).status_code != 302
    assert admin_client.patch(f"/api/users/{CLINICIAN[0]}", json={"disabled": False}).status_code == 200
    assert login(app.test_client(), *CLINICIAN).status_code == 302
    # Nobody disables themselves, and the last enabled admin stays an admin.
    r = admin_client.patch(f"/api/users/{ADMIN[0]}", json={"disabled": True})
    assert r.status_code == 409 and "your own account" in r.get_json()["error"]
    r = admin_client.patch(f"/api/users/{ADMIN[0]}", json={"role": "clinician"})
    assert r.status_code == 409 and "last enabled admin" in r.get_json()["error"]
    assert admin_client.patch(f"/api/users/{ADMIN[0]}", json={"disabled": "yes"}).status_code == 400
    assert admin_client.patch("/api/users/nobody", json={"role": "admin"}).status_code == 404
    actions = [a["action"] for a in store.audit_log(("user.disable", "user.enable"))]
    assert actions == ["user.enable", "user.disable"]


def test_role_change_and_password_reset(app, store, admin_client, clinician_client):
    r = admin_client.patch(f"/api/users/{CLINICIAN[0]}", json={"role": "admin"})
    assert r.status_code == 200 and r.get_json()["user"]["role"] == "admin"
    assert clinician_client.get("/api/plugins").status_code == 401  # a role change ends the user's sessions
    again = app.test_client()
    assert login(again, *CLINICIAN).status_code == 302 and again.get("/api/plugins").status_code == 200
    r = admin_client.post(f"/api/users/{CLINICIAN[0]}/reset-password")
    password = r.get_json()["one_time_password"]
    assert r.status_code == 200 and len(password) >= 12
    assert login(app.test_client(), *CLINICIAN).status_code != 302  # the old password is gone
    assert login(app.test_client(), CLINICIAN[0], password).status_code == 302
    assert store.get_user(CLINICIAN[0])["must_change_password"] == 1
    assert store.audit_log("user.password.reset")[0]["detail"] == {"target": CLINICIAN[0]}


def test_the_audit_log_filters_by_user_model_date_and_action_and_exports_csv(store, admin_client):
    run = store.create_run("tiny_cnn", "phantom", {})
    store.audit("run.start", user="admin", run_id=run["id"])
    store.audit("diagnose", user="clin", run_id=run["id"], label="benign")
    store.audit("diagnose", user="ana", run_id=None, label="normal")
    rows = admin_client.get("/api/audit?action=diagnose").get_json()["rows"]
    assert [r["user"] for r in rows] == ["ana", "clin"]
    rows = admin_client.get(f"/api/audit?run_id={run['id']}&user=clin").get_json()["rows"]
    assert [(r["action"], r["detail"]["label"]) for r in rows] == [("diagnose", "benign")]
    today = store.audit_log(limit=1)[0]["time"][:10]
    assert len(admin_client.get(f"/api/audit?since={today}&until={today}&action=diagnose").get_json()["rows"]) == 2
    assert admin_client.get("/api/audit?until=2000-01-01").get_json()["rows"] == []
    r = admin_client.get("/api/audit?since=yesterday")
    assert r.status_code == 400 and "since must be a date" in r.get_json()["error"]
    page = admin_client.get("/api/audit?limit=1").get_json()
    older = admin_client.get(f"/api/audit?limit=1&before_id={page['next_before_id']}").get_json()["rows"]
    assert older and older[0]["id"] < page["rows"][0]["id"]
    r = admin_client.get("/api/audit.csv?action=diagnose")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert table[0] == ["id", "time", "user", "action", "run_id", "detail"]
    assert [row[2] for row in table[1:]] == ["ana", "clin"] and '"label": "normal"' in table[1][5]
    html = admin_client.get("/admin/audit?action=diagnose&user=clin").get_data(as_text=True)
    assert html.count('<tr data-id=') == 1 and 'href="/api/audit.csv?action=diagnose&amp;user=clin"' in html
    assert admin_client.get("/admin/users").status_code == 200


def test_clinicians_reach_no_admin_page_or_api(clinician_client):
    for path in ("/admin/users", "/admin/audit", "/api/users", "/api/audit", "/api/audit.csv"):
        assert clinician_client.get(path).status_code == 403, path
    assert clinician_client.post("/api/users", json={"name": "x", "role": "admin"}).status_code == 403
