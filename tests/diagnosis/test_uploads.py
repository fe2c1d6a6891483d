"""Uploads are decoded no larger than needed, within a budget of pixels decoded at once."""

from __future__ import annotations

import io
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from busi_web.diagnosis.uploads import PixelBudget, decode_image
from tests.helpers import finished_run, image_bytes, make_user_client, upload


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


def scan(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (what survives a downscale is then easy to compare)."""
    small = np.random.default_rng(seed).integers(0, 255, (h // 50, w // 50, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class Recording(PixelBudget):
    """A real budget that also keeps how many pixels each decode asked for."""

    def __init__(self, pixels: int):
        super().__init__(pixels)
        self.asked: list[int] = []

    def hold(self, pixels: int):
        self.asked.append(pixels)
        return super().hold(pixels)


def test_a_large_png_is_shrunk_to_the_longer_side_and_matches_a_plain_resize():
    full = scan(2000, 3000)
    budget = Recording(40_000_000)
    arr, fmt, scale = decode_image(encoded(full, "PNG"), "big.png", 40_000_000, max_side=1024, budget=budget)
    assert fmt == "PNG" and arr.shape == (683, 1024, 3) and scale == pytest.approx(1024 / 3000)
    reference = cv2.resize(full, (1024, 683), interpolation=cv2.INTER_AREA)
    assert np.abs(arr.astype(int) - reference.astype(int)).mean() < 2.0
    assert budget.asked == [3000 * 2000] and budget.used == 0
    small, _, one = decode_image(encoded(full[:500, :700], "PNG"), "small.png", 40_000_000, max_side=1024)
    assert small.shape == (500, 700, 3) and one == 1.0  # under the side: untouched


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_in_draft_mode():
    full = scan(3000, 4000)
    budget = Recording(40_000_000)
    arr, fmt, scale = decode_image(encoded(full, "JPEG", quality=90), "big.jpg", 40_000_000, max_side=1024,
                                   budget=budget)
    assert fmt == "JPEG" and max(arr.shape[:2]) == 1024 and scale == pytest.approx(0.256)
    assert budget.asked == [2000 * 1500]  # the decoder skipped to half scale: a quarter of the pixels
    reference = cv2.resize(full, (arr.shape[1], arr.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(arr.astype(int) - reference.astype(int)).mean() < 4.0


def test_the_budget_lets_small_decodes_pass_and_makes_large_ones_take_turns():
    budget = PixelBudget(100)
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder(name: str, pixels: int, wait: threading.Event | None = None):
        with budget.hold(pixels):
            order.append(name)
            entered.set()
            if wait is not None:
                wait.wait(10)

    first = threading.Thread(target=holder, args=("first", 60, release))
    first.start()
    assert entered.wait(10)
    small = threading.Thread(target=holder, args=("small", 30))  # fits beside the first: goes at once
    small.start()
    small.join(10)
    second = threading.Thread(target=holder, args=("second", 60))  # does not fit: waits for the first
    second.start()
    second.join(0.3)
    assert second.is_alive() and order == ["first", "small"]
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["first", "small", "second"] and budget.used == 0
    with budget.hold(500):  # larger than the whole budget: it decodes alone, it does not wait forever
        assert budget.used == 500


def test_the_api_answers_at_the_decoded_size_with_its_scale(app):
    finished_run(app.extensions["busi_web"].store, promote=True)
    client = make_user_client(app, "clin", "velvet-cactus-17", "clinician")
    big = encoded(scan(1500, 2400), "PNG")
    r = client.post("/api/predict", data=upload((big, "wide.png"), (image_bytes(), "small.png"),
                                               images="original,overlay,heatmap"))
    assert r.status_code == 200, r.get_json()
    wide, small = r.get_json()["results"]
    assert (wide["width"], wide["height"]) == (1024, 640) and wide["scale"] == pytest.approx(1024 / 2400)
    import base64

    for key in ("original_png", "overlay_png", "heatmap_png"):
        assert Image.open(io.BytesIO(base64.b64decode(wide[key]))).size == (1024, 640), key
    assert small["scale"] == 1.0 and (small["width"], small["height"]) == (64, 48)
