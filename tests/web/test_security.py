"""Security rules checked over the whole app: login everywhere, admin-only actions, CSRF, hostile uploads."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import finished_run, image_bytes, make_user_client, upload

PUBLIC = {"auth.login", "static", "health.healthz", "health.readyz", "health.favicon", "metrics.scrape"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# Endpoints that must exist and be covered by the walks below (so a walk can never pass by finding nothing).
KNOWN = {"diagnose.predict", "train.start_run", "train.cancel_run", "models.promote_run", "runs_api.list_runs",
         "runs_api.run_artifact", "auth.logout", "auth.password"}
ADMIN_API = {"train.start_run", "train.cancel_run", "train.resume_run", "models.promote_run", "models.set_default",
             "models.clear_default", "models.settings", "models.define_acceptance", "models.evaluate_acceptance",
             "admin.users", "admin.add_user", "admin.change_user", "admin.reset_password", "admin.audit",
             "admin.audit_csv", "system.plugins"}
ADMIN_PAGES = ("/train", "/plugins")  # the pages the issue reserves for admins


@pytest.fixture
def csrf_app(app_config):
    from busi_web import create_app

    return create_app({**app_config, "WTF_CSRF_ENABLED": True})


def concrete(rule) -> str:
    """The rule's path with every variable filled (numbers for int converters)."""
    return re.sub(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>", lambda m: "1" if m.group(1) == "int" else "x", rule.rule)


def routes(app, methods: set[str] | None = None):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if methods is None or method in methods:
                yield rule, method


def test_every_route_except_login_and_static_needs_a_session(csrf_app):
    client = csrf_app.test_client()
    checked = set()
    for rule, method in routes(csrf_app):
        if rule.endpoint in PUBLIC:
            continue
        path = concrete(rule)
        r = client.open(path, method=method)
        if path.startswith("/api/"):
            assert r.status_code == 401 and r.is_json and "login required" in r.get_json()["error"], (method, path)
        else:
            assert r.status_code == 302 and r.headers["Location"].startswith("/login?next="), (method, path)
        checked.add(rule.endpoint)
    assert checked >= KNOWN
    assert client.get("/login").status_code == 200
    assert client.get("/static/css/app.css").status_code == 200


def test_admin_only_actions_give_403_to_a_clinician(app):
    clinician = make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    admin_views = {endpoint for endpoint, view in app.view_functions.items() if getattr(view, "admin_only", False)}
    assert admin_views >= ADMIN_API
    admin_pages = [rule for rule in app.url_map.iter_rules() if rule.rule in ADMIN_PAGES]
    assert all(rule.endpoint in admin_views for rule in admin_pages), [r.endpoint for r in admin_pages]
    finished_run(app.extensions["busi_web"].store)  # run 1 exists, so a 403 cannot be a 404 in disguise
    for rule, method in routes(app):
        if rule.endpoint not in admin_views:
            continue
        path = concrete(rule)
        r = clinician.open(path, method=method, json={} if method in STATE_CHANGING else None)
        assert r.status_code == 403, (method, path, r.status_code)
        if path.startswith("/api/"):
            assert "only an administrator" in r.get_json()["error"]
    # What clinicians may do still works.
    assert clinician.get("/api/runs").status_code == 200 and clinician.get("/api/runs/1").status_code == 200


def test_csrf_is_required_on_every_state_changing_request(csrf_app):
    store = csrf_app.extensions["busi_web"].store
    store.add_user("boss", "admin", "copper-violet-33")
    checked = set()
    for rule, method in routes(csrf_app, STATE_CHANGING):
        path = concrete(rule)
        client = make_user_client(csrf_app, "boss", "copper-violet-33", "admin")
        r = client.open(path, method=method, data={"x": "1"})
        assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True), (method, path, r.status_code)
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/account/password").get_data(
            as_text=True)).group(1)
        r = client.open(path, method=method, data={"x": "1"}, headers={"X-CSRFToken": token})
        assert "CSRF" not in r.get_data(as_text=True), (method, path)
        checked.add(rule.endpoint)
    assert {"diagnose.predict", "train.start_run", "auth.logout", "auth.login"} <= checked
    # Logging in needs the token too (no login CSRF).
    r = csrf_app.test_client().post("/login", data={"username": "boss", "password": "copper-violet-33"})
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)


class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self.meta_csrf = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"method": (a.get("method") or "get").lower(), "action": a.get("action"),
                               "fields": set()})
        elif tag == "input" and self.forms:
            self.forms[-1]["fields"].add(a.get("name"))
        elif tag == "meta" and a.get("name") == "csrf-token" and a.get("content"):
            self.meta_csrf = True


def test_every_html_form_carries_the_csrf_token_and_pages_have_the_meta_tag(csrf_app):
    admin = make_user_client(csrf_app, "boss", "copper-violet-33", "admin")
    pages = 0
    for rule, _method in routes(csrf_app, {"GET"}):
        if rule.arguments or rule.rule.startswith(("/api/", "/static")) or rule.endpoint == "auth.login":
            continue
        r = admin.get(rule.rule)
        if r.status_code != 200 or r.mimetype != "text/html":
            continue
        parser = _Forms()
        parser.feed(r.get_data(as_text=True))
        assert parser.meta_csrf, f"{rule.rule} lacks <meta name='csrf-token'> for the scripts"
        for form in parser.forms:
            if form["method"] == "post":
                assert "csrf_token" in form["fields"], (rule.rule, form["action"])
        pages += 1
    assert pages >= 2


# -- uploads ----------------------------------------------------------------------------------------------
def _png_of(shape, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, shape).save(buf, "PNG")
    return buf.getvalue()


def _truncated(fmt: str) -> bytes:
    data = image_bytes(fmt, hw=(64, 64), rgb=True)
    return data[: len(data) // 2]


@pytest.fixture
def diagnose(app):
    """A clinician client and a served model (uploads are checked whether or not a model exists)."""
    finished_run(app.extensions["busi_web"].store, promote=True)
    return make_user_client(app, "clin", "velvet-cactus-17", "clinician")


@pytest.mark.parametrize("data, name, status, words", [
    (b"", "empty.png", 400, "empty (0 bytes)"),
    (b"just some text, not pixels", "notes.png", 400, "not an image"),
    (_truncated("PNG"), "half.png", 400, "truncated"),
    (_truncated("JPEG"), "half.jpg", 400, "truncated"),
    (image_bytes("GIF"), "anim.gif", 400, "GIF image; upload a PNG, JPEG, BMP, TIFF or DICOM"),
    (_png_of((4, 4)), "dot.png", 400, "only 4x4 pixels"),
    (_png_of((8000, 6000), "1"), "wide.png", 413, "MAX_IMAGE_PIXELS"),  # 48 Mpx: over the 40 Mpx default
    # 900 Mpx in ~100 kB: Pillow refuses it while reading the header; the message quotes the configured limit.
    (_png_of((30000, 30000), "1"), "bomb.png", 413, "limit of 40,000,000 (MAX_IMAGE_PIXELS)"),
])
def test_bad_uploads_get_400_or_413_naming_the_file_never_500(diagnose, app, data, name, status, words):
    r = diagnose.post("/api/predict", data=upload((data, name)))
    body = r.get_json()
    assert r.status_code == status, body
    assert name in body["error"] and words in body["error"], body["error"]
    assert app.extensions["busi_web"].store.audit_log("diagnose") == []


def test_one_bad_file_among_good_ones_refuses_the_request(diagnose, app):
    r = diagnose.post("/api/predict", data=upload((image_bytes(), "good.png"), (b"", "bad.png")))
    assert r.status_code == 400 and "bad.png" in r.get_json()["error"]
    assert app.extensions["busi_web"].store.audit_log("diagnose") == []


def test_no_file_or_an_empty_file_field_is_a_400(diagnose):
    for data in ({}, {"image": (io.BytesIO(b""), "")}, {"image": "not a file"}):
        r = diagnose.post("/api/predict", data=data)
        assert r.status_code == 400 and "no image was sent" in r.get_json()["error"]


def test_request_size_and_pixel_limits_follow_the_settings(app_config):
    from busi_web import create_app

    app = create_app({**app_config, "MAX_UPLOAD_MB": 0.05, "MAX_IMAGE_PIXELS": 10_000})
    finished_run(app.extensions["busi_web"].store, promote=True)
    client = make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, "PNG")  # ~120 kB of incompressible pixels
    r = client.post("/api/predict", data=upload((big.getvalue(), "big.png")))
    assert r.status_code == 413 and "0.05 MB" in r.get_json()["error"] and "MAX_UPLOAD_MB" in r.get_json()["error"]
    r = client.post("/api/predict", data=upload((_png_of((200, 200)), "many.png")))
    assert r.status_code == 413 and "40,000 pixels" in r.get_json()["error"] and "10,000" in r.get_json()["error"]
    r = client.post("/api/predict", data=upload((_png_of((90, 90)), "fine.png")))
    assert r.status_code == 200


def test_sixteen_bit_and_palette_images_are_accepted(diagnose):
    deep = io.BytesIO()
    Image.fromarray(np.linspace(0, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)).save(deep, "TIFF")
    pal = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).convert("P").save(pal, "PNG")
    r = diagnose.post("/api/predict", data=upload((deep.getvalue(), "deep.tif"), (pal.getvalue(), "pal.png")))
    assert r.status_code == 200, r.get_json()
    assert [x["width"] for x in r.get_json()["results"]] == [64, 32]


def test_the_monitoring_probes_are_anonymous_and_reveal_nothing(app, client):
    from tests.helpers import finished_run

    store = app.extensions["busi_web"].store
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    r = client.get("/readyz")  # no default model yet: not ready for diagnoses
    assert r.status_code == 503 and r.get_json() == {"ready": False, "checks": {"store": "ok",
                                                                               "default_models": "none set"}}
    run = finished_run(store, promote=True)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json() == {"ready": True, "checks": {"store": "ok",
                                                                              "model.ultrasound": "ok"}}
    (Path(run["run_dir"]) / "best_model.pt").write_bytes(b"not a checkpoint")
    app.extensions["busi_web"].predictors.clear()
    r = client.get("/readyz")
    body = r.get_data(as_text=True)
    assert r.status_code == 503 and r.get_json()["checks"]["model.ultrasound"] == "does not load"
    assert run["run_dir"] not in body and "best_model" not in body and "Traceback" not in body


def test_clinicians_see_no_server_paths_and_no_trainer_stderr(app, clinician_client, admin_client):
    """Every place a run shows up: the API, its page, its files, the Models page and the model card."""
    store = app.extensions["busi_web"].store
    run = finished_run(store, promote=True)
    folder = Path(run["run_dir"])
    secret_dir = "/srv/hospital/images/busi"
    store.update_run(run["id"], data_dir=secret_dir, error=f"could not read {secret_dir}/benign (1).png",
                     params={**run["params"], "backbone": {"pretrained_path": "/opt/weights/resnet50.pth"}})
    (folder / "trainer_stderr.txt").write_text(f'Traceback: File "{folder}/x.py"\n')
    (folder / "training_log.txt").write_text(f"data from {secret_dir}\nFAILED: no file {secret_dir}/a.png\n")
    (folder / "params.json").write_text(json.dumps({"data_dir": secret_dir}))
    rid = run["id"]
    pages = {path: clinician_client.get(path) for path in (
        "/api/runs", f"/api/runs/{rid}", f"/runs/{rid}", "/runs", f"/api/runs/{rid}/artifacts/params.json",
        f"/api/runs/{rid}/artifacts/training_log.txt", "/models", "/api/models", f"/api/runs/{rid}/card",
        f"/api/runs/{rid}/card.md", "/api/models/active", f"/runs/compare?ids={rid},{rid + 0}", "/")}
    for path, r in pages.items():
        text = r.get_data(as_text=True)
        assert r.status_code in (200, 400), (path, r.status_code)
        for secret in (str(folder), str(folder.parent), secret_dir, "/opt/weights", "/srv/"):
            assert secret not in text, (path, secret)
    shown = pages[f"/api/runs/{rid}"].get_json()
    assert shown["error"] == "could not read …/benign (1).png"  # what, not where
    assert shown["params"]["backbone"]["pretrained_path"] == "…/resnet50.pth" and shown["run_dir"] is None
    assert "training_log.txt" in pages[f"/api/runs/{rid}"].get_json()["artifacts"]
    assert "trainer_stderr.txt" not in pages[f"/api/runs/{rid}"].get_json()["artifacts"]
    stderr = clinician_client.get(f"/api/runs/{rid}/artifacts/trainer_stderr.txt")
    assert stderr.status_code == 403 and "administrator" in stderr.get_json()["error"]
    # Admins see it all.
    whole = admin_client.get(f"/api/runs/{rid}").get_json()
    assert whole["run_dir"] == str(folder) and whole["data_dir"] == secret_dir
    assert "trainer_stderr.txt" in whole["artifacts"]
    assert admin_client.get(f"/api/runs/{rid}/artifacts/trainer_stderr.txt").status_code == 200
    assert secret_dir in admin_client.get(f"/api/runs/{rid}/artifacts/params.json").get_data(as_text=True)
