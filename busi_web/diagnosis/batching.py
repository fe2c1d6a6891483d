"""Micro-batching: concurrent diagnosis requests share one forward (and backward) pass.

Every request thread hands its images to one worker thread and waits. The
worker takes the oldest waiting request plus every request that queued up
while the previous batch ran (up to ``max_batch`` images), groups those that
can share a pass (same model, explainer, explainer parameters, layer, and
all-or-none explicit targets), and calls :meth:`Predictor.predict_batch` once
per group. Under load the batch fills by itself; an idle server answers a
lone request at once (there is no waiting for company unless ``max_wait_s``
is set). Decoding uploads, preprocessing them into the model's input tensors (:meth:`Predictor.prepare`)
and encoding PNGs stay in the request threads, which run them in parallel with the model's pass.

If a shared pass fails, each of its requests is retried alone, so one bad
request (e.g. an out-of-range target) cannot fail its neighbours.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from busi_web.data.scan import Box
from busi_web.model.prediction import Prediction
from busi_web.model.predictor import Predictor

WAIT_LIMIT_S = 600.0  # a request never waits forever for the worker
IDLE_EXIT_S = 60.0  # an idle worker thread ends (a new one starts with the next request)


@dataclass
class _Job:
    predictor: Predictor
    images: list[np.ndarray]
    tensors: list  # the images preprocessed by the request thread (Predictor.prepare: Prepared inputs)
    explainer: str | None
    targets: list[int] | None
    explainer_params: dict[str, Any]
    layer: str | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Prediction] | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple:
        return (id(self.predictor), self.explainer, self.layer, self.targets is None,
                json.dumps(self.explainer_params, sort_keys=True, default=str))


class MicroBatcher:
    """One worker thread that runs the predictions of concurrent requests in shared batches. Thread-safe."""

    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.0):
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # passes run, and images in them: the mean batch size is images / batches
        self.images = 0
        self.busy_s = 0.0  # time spent in passes: busy_s / wall time says whether the model is the bottleneck
        self.busy_cpu_s = 0.0  # the batcher thread's own CPU in passes (the model's worker threads not counted)

    def predict(self, predictor: Predictor, images: Sequence[np.ndarray], explainer: str | None = "gradcam",
                targets: Sequence[int] | None = None, explainer_params: Mapping[str, Any] | None = None,
                layer: str | None = None, regions: Sequence[Box | None] | None = None) -> list[Prediction]:
        """Like :meth:`Predictor.predict_batch`, but shared with concurrent callers; raises what it raises.
        ``regions``: each image's ultrasound region when its file names it (DICOM)."""
        images = list(images)
        job = _Job(predictor, images, predictor.prepare(images, regions), explainer,
                   None if targets is None else [int(t) for t in targets], dict(explainer_params or {}), layer)
        self._queue.put(job)
        self._ensure_started()  # after the put: a worker that is just leaving (idle) sees the job or is replaced
        if not job.done.wait(WAIT_LIMIT_S):
            raise TimeoutError(f"the prediction worker did not answer within {WAIT_LIMIT_S:.0f} s")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="busi-predict-batcher", daemon=True)
                self._thread.start()

    def _take(self) -> list[_Job] | None:
        try:
            jobs = [self._queue.get(timeout=IDLE_EXIT_S)]
        except queue.Empty:
            with self._lock:  # leave only if nothing arrived meanwhile; predict() starts a new worker after its put
                if self._queue.empty():
                    self._thread = None
                    return None
            jobs = [self._queue.get()]
        count = len(jobs[0].images)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Job]) -> None:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            self._run_group(group)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.busy_cpu_s += time.thread_time() - cpu0

    def _run_group(self, group: list[_Job]) -> None:
        first = group[0]
        try:
            if len(group) == 1:
                self._finish_alone(first)
                return
            images = [img for job in group for img in job.images]
            tensors = [t for job in group for t in job.tensors]
            targets = None if first.targets is None else [t for job in group for t in job.targets or []]
            results = first.predictor.predict_batch(images, first.explainer, targets, first.explainer_params,
                                                    first.layer, prepared=tensors)
            self._count(len(images))
            start = 0
            for job in group:
                job.result = results[start:start + len(job.images)]
                start += len(job.images)
                job.done.set()
        except BaseException:  # noqa: BLE001 - retried one by one so each request gets its own error
            for job in group:
                if not job.done.is_set():
                    self._finish_alone(job)

    def _finish_alone(self, job: _Job) -> None:
        try:
            job.result = job.predictor.predict_batch(job.images, job.explainer, job.targets, job.explainer_params,
                                                     job.layer, prepared=job.tensors)
            self._count(len(job.images))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request thread, which raises it
            job.error = exc
        finally:
            job.done.set()

    def _count(self, n: int) -> None:
        self.batches += 1
        self.images += n
