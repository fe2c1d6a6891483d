"""Micro-batching: concurrent requests share passes, get the answers of lone calls, and fail alone."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from busi_web.diagnosis.batching import MicroBatcher
from busi_web.model.predictor import Predictor
from busi_web.plugins import load_plugins
from tests.helpers import finished_run


def test_micro_batcher_shares_passes_keeps_results_apart_and_isolates_errors(tmp_path, store):
    """Concurrent callers get the same answers as lone calls; one bad request does not fail its neighbours."""
    run = finished_run(store)
    predictor = Predictor.from_checkpoint(Path(run["run_dir"]) / "best_model.pt", load_plugins())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + 4 * i, 48), dtype=np.uint8) for i in range(12)]
    alone = [predictor.predict(img) for img in images]
    batcher = MicroBatcher(max_batch=8, max_wait_s=0.05)  # a short wait so that the threads meet in one pass
    results, errors = {}, {}

    def call(i: int) -> None:
        try:
            target = [7] if i == 5 else None  # out of range: only this request may fail
            results[i] = batcher.predict(predictor, [images[i]], "gradcam", target)[0]
        except ValueError as exc:
            errors[i] = str(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(errors) == {5} and "target class" in errors[5]
    assert batcher.batches < len(images) - 1  # some requests shared a pass
    for i, pred in results.items():
        assert pred.probabilities == pytest.approx(alone[i].probabilities, abs=1e-5)
        assert pred.heatmap.shape == images[i].shape
        np.testing.assert_allclose(pred.heatmap, alone[i].heatmap, atol=1e-4)
