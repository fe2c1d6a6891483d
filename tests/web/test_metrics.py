"""Prometheus metrics: who may scrape, and that the numbers follow what the app did."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import finished_run, image_bytes, upload


@pytest.fixture
def app(app_config):
    from busi_web import create_app

    return create_app({**app_config, "METRICS_TOKEN": "prometheus-scrape-secret"})


def samples(response) -> dict[tuple[str, tuple], float]:
    """``{(name, sorted labels): value}`` parsed by prometheus-client's own parser."""
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def test_only_admins_and_the_metrics_token_may_scrape(app, admin_client, clinician_client):
    anonymous = app.test_client().get("/metrics")
    assert anonymous.status_code == 401 and "METRICS_TOKEN" in anonymous.get_data(as_text=True)
    assert clinician_client.get("/metrics").status_code == 403
    wrong = app.test_client().get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    scraper = app.test_client()
    assert scraper.get("/metrics", headers={"Authorization": "Bearer prometheus-scrape-secret"}).status_code == 200
    # The metrics token opens nothing else.
    assert scraper.get("/api/runs", headers={"Authorization": "Bearer prometheus-scrape-secret"}).status_code == 401
    assert admin_client.get("/metrics").status_code == 200


def test_requests_diagnoses_runs_and_device_are_counted(app, admin_client):
    store = app.extensions["busi_web"].store
    run = finished_run(store, promote=True)
    store.create_run("tiny_cnn", "phantom", {})  # one in the queue
    for _ in range(2):
        assert admin_client.post("/api/predict", data=upload((image_bytes(), "a.png"), (image_bytes(seed=1), "b.png")),
                                 ).status_code == 200
    assert admin_client.get("/api/runs/424242").status_code == 404
    admin_client.get("/no/such/page")
    got = samples(admin_client.get("/metrics"))
    assert got[("busi_web_diagnoses_total", (("modality", "ultrasound"), ("run_id", str(run["id"]))))] == 4
    assert got[("busi_web_http_requests_total", (("method", "POST"), ("route", "/api/predict"),
                                                 ("status", "200")))] == 2
    assert got[("busi_web_http_requests_total", (("method", "GET"), ("route", "/api/runs/<int:run_id>"),
                                                 ("status", "404")))] == 1
    assert ("busi_web_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))) in got
    assert got[("busi_web_http_request_duration_seconds_count", (("method", "POST"), ("route", "/api/predict")))] == 2
    assert got[("busi_web_runs", (("status", "queued"),))] == 1
    assert got[("busi_web_runs", (("status", "finished"),))] == 1
    assert got[("busi_web_trainer_running", ())] == 0
    assert got[("busi_web_predict_images_total", ())] == 4
    assert got[("busi_web_device_info", (("device", "cpu"), ("name", "cpu")))] == 1
    assert got[("process_resident_memory_bytes", ())] > 50e6
