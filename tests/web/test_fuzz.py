"""No input gives a 5xx: Hypothesis drives every route's path, query, form and JSON with hostile values.

The values are what a security tester sends: Unicode digits (``²``, ``٣``,
``１２``), integers far past 64 bits, wrong types (numbers, lists, objects where
text is expected), NaN and infinities, empty and blank strings. Each answer
must be below 500 and, when it is an error, carry a message. The argument
names come from the web layer's own source, so a new argument is driven as
soon as it is read. The last test replays the attack report's cases one by one.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ADMIN, ROOT, finished_run, image_bytes, login, make_user_client, upload

pytestmark = pytest.mark.slow

WEB = Path(__file__).resolve().parents[2] / "busi_web" / "web"
# Every request argument the web layer reads: arg("x"), body_arg(body, "x"), body_str(body, "x"),
# request.values/args/form.get("x"), body.get("x"), form.get("x").
READS = re.compile(r'''(?:\barg\(|body_(?:arg|str)\(\w+,\s*|\.get\(|getlist\()"([a-z_]+)"''')
NAMES = sorted({m for f in WEB.glob("*.py") for m in READS.findall(f.read_text())} | {"unknown_field"})
SKIP = {"static", "auth.logout"}
# Examples per route: 25 in the suite; FUZZ_EXAMPLES=500 for an attack run of its own.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))  # a logout ends the session the rest of the walk uses

HUGE = ["99999999999999999999999", "-99999999999999999999999", str(2**63), str(-(2**63) - 1), "1e400"]
ODD_DIGITS = ["²", "٣", "１２", "߁", "𝟗", "Ⅻ", "½", "1_000", " 7 ", "0x10", "+5", "-0"]
SPECIAL = ["", " ", "NaN", "nan", "inf", "-Infinity", "null", "true", "[]", "{}", "\x00", "../../etc/passwd",
           "/etc/passwd", "a" * 5000, "ultrasound", "gradcam", "1", "0", "-1"]
TEXT = st.one_of(st.sampled_from(HUGE + ODD_DIGITS + SPECIAL), st.text(max_size=30))
SCALAR = st.one_of(TEXT, st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True),
                   st.booleans(), st.none())
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.sampled_from(NAMES), inner,
                                                                           max_size=3)), max_leaves=6)
PATH_TEXT = st.one_of(st.sampled_from(HUGE + ODD_DIGITS + ["1", "0", "admin", "clin", "ultrasound", "x.pt",
                                                             "metrics.json", "trainer_stderr.txt", "..%2f..%2fetc"]),
                      st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"),
                              min_size=1, max_size=20))
FIELDS = st.dictionaries(st.sampled_from(NAMES), TEXT, max_size=5)
BODIES = st.one_of(st.dictionaries(st.sampled_from(NAMES), JSON_VALUE, max_size=6), JSON_VALUE)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """An app with a default model and a finished run, and an admin's client (admins reach every route).

    The job runner never starts: a body that happens to be a valid run stays queued instead of training.
    """
    from busi_web import create_app

    inst = tmp_path_factory.mktemp("fuzz") / "instance"
    app = create_app({"INSTANCE_PATH": str(inst), "SECRET_KEY": "fuzz", "AUTO_FIRST_RUN": False,
                      "WTF_CSRF_ENABLED": False, "LOGIN_LIMIT_ADDRESS": "100000 per minute",
                      "LOGIN_LIMIT_ACCOUNT": "100000 per minute"})  # the walk logs in again and again
    services = app.extensions["busi_web"]
    services.runner.ensure_started = lambda: None
    run = finished_run(services.store)
    services.store.set_default(run["id"], by="admin", reason="the fuzzed instance's model")
    return app, make_user_client(app, *ADMIN, "admin")


def keep_admin(app, client) -> None:
    """Undo what an earlier example did to the walking admin (a reset password, a role change, disabling, a
    logout by session version), so every example runs with an admin's session; and put a default model back
    when an example cleared it or deleted its run (a long walk does both)."""
    store = app.extensions["busi_web"].store
    if store.default_model("ultrasound") is None:
        runs = store.list_runs(status="finished") or [finished_run(store)]
        store.set_default(runs[0]["id"], by="admin", reason="the fuzzed instance's model, put back")
    user = store.get_user(ADMIN[0])
    if user["role"] != "admin":
        store.set_role(ADMIN[0], "admin", by="fuzz")
    if user.get("disabled"):
        store.set_disabled(ADMIN[0], False, by="fuzz")
    if client.get("/api/me").status_code != 200:
        store.set_password(ADMIN[0], ADMIN[1])
        assert login(client, *ADMIN).status_code == 302


def endpoints():
    """Every rule and method of the app, as test parameters (read from a throwaway app at collection)."""
    import tempfile

    from busi_web import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"INSTANCE_PATH": tmp, "SECRET_KEY": "x", "AUTO_FIRST_RUN": False, "TESTING": True})
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in SKIP:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append(pytest.param(rule.rule, method, dict(rule._converters), id=f"{method} {rule.rule}"))
    return out


def fill(rule: str, values: dict[str, str]) -> str:
    """``rule`` with each variable replaced by its drawn text (percent-encoded as a client would send it)."""
    from urllib.parse import quote

    return re.sub(r"<(?:[^:>]+:)?(\w+)>", lambda m: quote(values[m.group(1)], safe=""), rule)


SEEN: Counter = Counter()  # (route, status) -> answers; written to test-artifacts/fuzz.json at the end


@pytest.fixture(scope="module", autouse=True)
def tally():
    """Keep what the walk got, per route and status (the attack report quotes it)."""
    yield
    out = ROOT / "test-artifacts" / "fuzz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    routes: dict[str, dict[str, int]] = {}
    for (route, status), n in sorted(SEEN.items()):
        routes.setdefault(route, {})[str(status)] = n
    out.write_text(json.dumps({"requests": sum(SEEN.values()), "5xx": sum(n for (_, s), n in SEEN.items()
                                                                          if s >= 500), "routes": routes}, indent=1))


def check(response, what: str, route: str | None = None) -> None:
    SEEN[(route or what, response.status_code)] += 1
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.get_data(as_text=True)[:500]}"
    if response.status_code >= 400:
        if response.is_json:
            error = response.get_json().get("error")
            assert isinstance(error, str) and len(error) > 10, (what, error)
        else:
            assert "<h1" in response.get_data(as_text=True), what


@pytest.mark.parametrize(("rule", "method", "converters"), endpoints())
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_input_gives_a_5xx(hostile, rule, method, converters, data):
    app, client = hostile
    keep_admin(app, client)
    # Half the time the real run 1 (or the admin, the modality), so the walk also gets past the routing.
    real = {"run_id": "1", "name": ADMIN[0], "modality": "ultrasound"}
    path = fill(rule, {name: data.draw(st.one_of(st.just(real.get(name, "x")), PATH_TEXT), label=name)
                       for name in converters})
    query = data.draw(FIELDS, label="query")
    kind = data.draw(st.sampled_from(["json", "form", "none"]) if method != "GET" else st.just("none"),
                     label="body kind")
    kwargs: dict = {"query_string": query}
    if kind == "json":
        body = data.draw(BODIES, label="json")
        kwargs["data"] = json.dumps(body, allow_nan=True)
        kwargs["content_type"] = "application/json"
    elif kind == "form":
        form = data.draw(FIELDS, label="form")
        if rule == "/api/predict" and data.draw(st.booleans(), label="with an image"):
            kwargs["data"] = upload((data.draw(st.sampled_from([image_bytes(), b"", b"\x89PNG\r\n", b"GIF89a"])),
                                     data.draw(st.sampled_from(["a.png", "", "x.exe", "²"]))), **form)
        else:
            kwargs["data"] = form
    r = client.open(path, method=method, **kwargs)
    check(r, f"{method} {path} {kwargs.get('query_string')} {str(kwargs.get('data'))[:300]}", f"{method} {rule}")


# The attack report's cases, one by one (each answered 500 before the argument layer).
BIG = "99999999999999999999999"
REPORTED = [
    ("POST", "/api/predict", "form", {"target": "²"}),
    ("POST", "/api/predict", "form", {"run_id": "²"}),
    ("POST", "/api/predict", "form", {"run_id": BIG}),
    ("GET", f"/api/runs?limit={BIG}", None, None),
    ("GET", f"/api/runs/1/metrics?after_id={BIG}", None, None),
    ("GET", f"/api/runs/{BIG}", None, None),
    ("GET", f"/api/runs/{BIG}/model", None, None),
    ("POST", f"/api/runs/{BIG}/promote", "json", {"reason": "regression"}),
    ("POST", f"/api/runs/{BIG}/cancel", None, None),
    ("GET", f"/runs/{BIG}", None, None),
    ("GET", f"/runs/compare?ids=1,{BIG}", None, None),
    ("POST", "/api/runs", "json", {"backbone": "tiny_cnn", "dataset": "imagefolder", "data_dir": 5}),
    ("POST", "/api/runs", "json", {"backbone": "tiny_cnn", "dataset": "imagefolder", "data_dir": ["/tmp"]}),
    ("POST", "/api/runs", "json", {"backbone": "resnet18", "dataset": "phantom",
                                   "backbone_params": {"pretrained_path": "/etc/passwd"}}),
    # The second attack's cases (issue 29): names, settings and the sites' new fields.
    ("POST", "/api/users", "json", {"name": "a/b", "role": "clinician"}),
    ("POST", "/api/users", "json", {"name": "nul\x00name", "role": "clinician"}),
    ("POST", "/api/users", "json", {"name": "cl\u0131n", "role": "clinician"}),
    ("PUT", "/api/modalities/ultrasound/settings", "json", {"floors": {"sensitivity_malignent": 0.7}}),
    ("PUT", "/api/modalities/nosuchmodality/settings", "json", {"floors": {"accuracy": 0.7}}),
    ("PUT", "/api/modalities/ultrasound/settings", "json", {"operating_sensitivity": 2}),
    ("POST", "/api/runs", "json", {"backbone": "tiny_cnn", "datasets": "busi"}),
    ("POST", "/api/runs", "json", {"backbone": "tiny_cnn", "datasets": [{"dataset": "phantom"}, {"dataset": 5}]}),
    ("POST", "/api/runs/1/operating-point", "json", {"sensitivity": BIG}),
]


@pytest.mark.parametrize(("method", "path", "kind", "fields"), REPORTED, ids=[f"{m} {p}" for m, p, *_ in REPORTED])
def test_the_reported_cases_get_a_4xx_naming_the_problem(hostile, method, path, kind, fields):
    app, client = hostile
    keep_admin(app, client)
    if kind == "form":
        r = client.open(path, method=method, data=upload((image_bytes(), "scan.png"), **fields))
    elif kind == "json":
        r = client.open(path, method=method, json=fields)
    else:
        r = client.open(path, method=method)
    check(r, f"reported: {method} {path}")
    assert 400 <= r.status_code < 500, (method, path, r.status_code, r.get_data(as_text=True)[:300])
    text = r.get_data(as_text=True)
    named = {"target", "run_id", "limit", "after_id", "data_dir", "pretrained_path"} & set(fields or {}) \
        or {n for n in ("limit", "after_id") if n in path}
    if named:  # the message names the field
        assert any(n in text for n in named), text[:300]
    if BIG in path and "?" not in path:
        assert r.status_code == 404 and f"no run {BIG}" in text
    assert "Traceback" not in text


def test_the_cli_refuses_a_bad_pretrained_path_without_a_traceback(tmp_path):
    from tests.helpers import run_cli

    out = run_cli("train", "--backbone", "resnet18", "--dataset", "phantom", "--epochs", "1",
                  "--param", "pretrained_path=/etc/passwd", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path / "i")})
    assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout
    assert "pretrained_path" in out.stderr and "/etc/passwd" in out.stderr
