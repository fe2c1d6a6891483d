"""Prometheus metrics (prometheus-client) at ``GET /metrics``, for admins or a configured bearer token.

What is measured:

* ``busi_web_http_requests_total{method, route, status}`` and
  ``busi_web_http_request_duration_seconds{method, route}``: every request,
  by its route rule (``/api/runs/<int:run_id>``, so the label set stays small;
  ``unmatched`` for a 404 of no route);
* ``busi_web_diagnoses_total{run_id, modality}``: images diagnosed, per model;
* ``busi_web_runs{status}``: runs per state (``queued`` is the queue length),
  and ``busi_web_trainer_running``: 1 while a trainer process holds the device;
* ``busi_web_predict_batches_total``, ``busi_web_predict_images_total`` and
  ``busi_web_predict_busy_seconds_total``: the micro-batcher's work;
* ``busi_web_diagnosis_stage_seconds_total{stage, clock}``: where a diagnosis
  request's time goes (decode, provenance, model, render, audit, respond), as
  the request thread's CPU and as wall time (``benchmarks/serve.py`` prints it);
* ``busi_web_device_info{device, name}``: where the models run (CPU or GPU),
  with ``busi_web_cpu_count`` and, on a GPU, the memory it holds;
* the process's own memory, CPU time and open files (``process_*``).

Each app has its own registry, so two apps in one process never share counts.
The scrape is allowed to an admin's session or API token, or to
``Authorization: Bearer <METRICS_TOKEN>`` when that setting is given (for a
Prometheus server that has no account).
"""

from __future__ import annotations

import hmac
import os
import time
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_login import current_user
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from busi_web.services import services_of
from busi_web.store import STATES

EXTENSION = "busi_web.metrics"
bp = Blueprint("metrics", __name__)
# Seconds: the latency buckets, from a static file to a large batch of diagnoses on a CPU.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class AppMetrics:
    """The counters of one app and the collector that reads the store, the batcher and the device at scrape."""

    def __init__(self, app: Flask):
        self.app = app
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("busi_web_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("busi_web_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.diagnoses = Counter("busi_web_diagnoses", "Images diagnosed, per model", ["run_id", "modality"],
                                 registry=self.registry)
        self.stages = Counter("busi_web_diagnosis_stage_seconds", "Time the diagnosis requests spent per stage: "
                              "clock=cpu is the request thread's own CPU, clock=wall the time it took",
                              ["stage", "clock"], registry=self.registry)
        self.request_cpu = Counter("busi_web_http_request_cpu_seconds", "The request threads' own CPU from the start "
                                   "of the app's handling of a request to its answer", ["method", "route"],
                                   registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.registry.register(self)

    def collect(self):
        """The values read at scrape time: runs per state, the trainer, the batcher and the device."""
        services = services_of(self.app)
        runs = GaugeMetricFamily("busi_web_runs", "Runs per state (queued: the queue length)", labels=["status"])
        for status in STATES:
            runs.add_metric([status], services.store.count_runs(status))
        yield runs
        yield GaugeMetricFamily("busi_web_trainer_running", "1 while a trainer process holds the device",
                                value=int(services.store.count_runs("running") > 0))
        batcher = services.batcher
        yield CounterMetricFamily("busi_web_predict_batches", "Batches the micro-batcher ran", value=batcher.batches)
        yield CounterMetricFamily("busi_web_predict_images", "Images the micro-batcher ran", value=batcher.images)
        yield CounterMetricFamily("busi_web_predict_busy_seconds", "Time the micro-batcher spent in passes",
                                  value=batcher.busy_s)
        yield CounterMetricFamily("busi_web_predict_busy_cpu_seconds", "The micro-batcher thread's own CPU in passes "
                                  "(the model's worker threads are not counted)", value=batcher.busy_cpu_s)
        yield from _device_metrics(self.app.config.get("DEVICE") or "auto")

    def describe(self):
        return []  # collected fresh at every scrape


def _device_metrics(setting: str):
    # torch is loaded by then (the models are); importing it here keeps the metrics module light to import
    import torch

    from busi_web.model.device import resolve_device  # with torch, above

    device = resolve_device(setting)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = GaugeMetricFamily("busi_web_device_info", "Where the models run", labels=["device", "name"])
    info.add_metric([str(device), name], 1)
    yield info
    yield GaugeMetricFamily("busi_web_cpu_count", "CPU cores of the machine", value=os.cpu_count() or 0)
    if device.type == "cuda":
        yield GaugeMetricFamily("busi_web_gpu_memory_allocated_bytes", "GPU memory held by this process's tensors",
                                value=torch.cuda.memory_allocated(device))


def metrics_of(app: Flask | None = None) -> AppMetrics:
    return (app or current_app).extensions[EXTENSION]


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()
    g.metrics_cpu = time.thread_time()


def _count(response):
    started = g.pop("metrics_started", None)
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics = metrics_of()
    metrics.requests.labels(request.method, rule, str(response.status_code)).inc()
    if started is not None:
        metrics.latency.labels(request.method, rule).observe(time.perf_counter() - started)
        metrics.request_cpu.labels(request.method, rule).inc(time.thread_time() - g.pop("metrics_cpu", 0.0))
    return response


def count_diagnoses(run_id: int, modality: str, images: int) -> None:
    """Add ``images`` diagnoses by model ``run_id`` of ``modality``."""
    metrics_of().diagnoses.labels(str(run_id), modality).inc(images)


@contextmanager
def stage(name: str):
    """Time a stage of a diagnosis request (decode, model, render, audit, ...) on both clocks."""
    cpu, wall = time.thread_time(), time.perf_counter()
    try:
        yield
    finally:
        counter = metrics_of().stages
        counter.labels(name, "cpu").inc(time.thread_time() - cpu)
        counter.labels(name, "wall").inc(time.perf_counter() - wall)


def metrics_token_ok(token: str) -> bool:
    """Whether ``token`` is the configured ``METRICS_TOKEN`` (compared in constant time)."""
    expected = current_app.config.get("METRICS_TOKEN")
    return bool(expected) and hmac.compare_digest(str(expected).encode(), token.encode())


@bp.get("/metrics")
def scrape():
    """The metrics in Prometheus' text format: an admin, or the bearer ``METRICS_TOKEN``."""
    if not g.get("metrics_token") and not getattr(current_user, "is_admin", False):
        # Plain text, like the metrics themselves: what a scraper's log shows.
        if not current_user.is_authenticated:
            return Response("the metrics need an administrator's login or API token, or 'Authorization: Bearer "
                            "<METRICS_TOKEN>'\n", 401, mimetype="text/plain")
        return Response(f"only an administrator may read the metrics; {current_user.name} is a "
                        f"{current_user.role}\n", 403, mimetype="text/plain")
    return Response(generate_latest(metrics_of().registry), content_type=CONTENT_TYPE_LATEST)


def init_metrics(app: Flask) -> Any:
    """Give ``app`` its registry, time and count every request, and serve ``/metrics``."""
    app.extensions[EXTENSION] = AppMetrics(app)
    app.before_request(_start_timer)
    app.after_request(_count)
    app.register_blueprint(bp)
    return app.extensions[EXTENSION]
