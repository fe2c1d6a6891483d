"""The shortcut check: burned-in marks drawn on phantom images, and maps on the marks or on the lesion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from busi_web_plugins.phantom import PhantomDataset

from busi_web.evaluation.shortcuts import ShortcutScore, detect_marks, shortcut_score, summarise_shortcuts

WHITE = (255, 255, 255)


def cross_sites(image: np.ndarray, n: int = 2) -> list[tuple[int, int]]:
    """Spots for calipers on mid-gray tissue, far apart. (A white mark on tissue that is itself near white
    has little contrast; the detector, like the eye, misses parts of it: a documented limit.)"""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    local = cv2.blur(gray, (9, 9))
    sites: list[tuple[int, int]] = []
    for y in range(20, 100, 6):
        for x in range(12, 116, 6):
            if local[y, x] < 150 and all(abs(x - a) + abs(y - b) > 40 for a, b in sites):
                sites.append((x, y))
    assert len(sites) >= n
    return sites[:n]


def draw_marks(image: np.ndarray, colour: tuple[int, int, int] = WHITE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caliper crosses and a line of text, as a scanner burns them in; returns image, cross and text pixels."""
    sites = cross_sites(image)
    image = image.copy()
    crosses = np.zeros(image.shape[:2], np.uint8)
    text = np.zeros(image.shape[:2], np.uint8)
    for x, y in sites:
        for canvas, col in ((image, colour), (crosses, 255)):
            cv2.line(canvas, (x - 4, y), (x + 4, y), col, 1)
            cv2.line(canvas, (x, y - 4), (x, y + 4), col, 1)
    for canvas, col in ((image, colour), (text, 255)):
        cv2.putText(canvas, "LT 3cm", (5, 120), cv2.FONT_HERSHEY_PLAIN, 0.8, col, 1)
    return image, crosses > 0, text > 0


@pytest.fixture(scope="module")
def phantom() -> PhantomDataset:
    return PhantomDataset(size=128, per_class=3, seed=1)


@pytest.mark.parametrize("index", [0, 3, 6])  # a benign, a malignant and a normal phantom
def test_drawn_crosses_and_text_are_found_and_the_clean_image_stays_almost_clean(phantom, index):
    clean = phantom.load_image(index)
    marked, crosses, text = draw_marks(clean)
    found = detect_marks(marked)
    assert found.dtype == bool and found.shape == clean.shape[:2]
    assert (found & crosses).sum() >= 0.9 * crosses.sum()  # the calipers, nearly every pixel
    assert (found & text).sum() >= 0.25 * text.sum()  # text: its straight strokes at least
    on_clean = detect_marks(clean)
    near = cv2.dilate((crosses | text).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert not (on_clean & near).any()  # nothing where the marks go, before they are drawn
    # Elsewhere the detector may take a piece of the phantom's bright, bumpy skin line (a known false
    # positive), but little, and the same with or without the marks.
    assert on_clean.mean() < 0.015
    assert not (found & ~near & ~on_clean).any() and (found & near).sum() >= crosses.sum()


def test_coloured_overlays_are_marks_whatever_their_shape(phantom):
    clean = phantom.load_image(0)
    marked, crosses, _text = draw_marks(clean, colour=(230, 220, 40))  # yellow calipers
    box = marked.copy()
    cv2.rectangle(box, (60, 10), (75, 25), (40, 120, 230), -1)  # a filled coloured icon
    found = detect_marks(box)
    assert (found & crosses).sum() >= 0.9 * crosses.sum()
    assert found[12:24, 62:74].all()


def test_gray_input_and_bad_input():
    img = np.full((64, 64), 90, np.uint8)
    cv2.line(img, (10, 20), (30, 20), 255, 1)
    cv2.line(img, (20, 10), (20, 30), 255, 1)
    assert detect_marks(img)[20, 20] and not detect_marks(img)[50, 50]
    with pytest.raises(ValueError, match="uint8"):
        detect_marks(img.astype(np.float32))


def _blob(shape: tuple[int, int], where: np.ndarray) -> np.ndarray:
    """A smooth map peaked on ``where``'s pixels."""
    hm = cv2.GaussianBlur(where.astype(np.float32), (0, 0), 2.0)
    return hm / hm.max()


def test_a_map_on_the_marks_is_flagged_and_one_on_the_lesion_is_not(phantom):
    marked, _crosses, _text = draw_marks(phantom.load_image(0))
    marks = detect_marks(marked)
    lesion = phantom.load_mask(0)
    assert lesion.any() and not (marks & lesion).any()
    on_marks = shortcut_score(_blob(marks.shape, marks), marks, lesion)
    on_lesion = shortcut_score(_blob(lesion.shape, lesion), marks, lesion)
    assert on_marks.flagged and on_marks.mark_energy > 0.3 and on_marks.mark_lift > 3
    assert not on_lesion.flagged and on_lesion.lesion_energy > 0.7 and on_lesion.mark_energy < 0.05
    uniform = shortcut_score(np.ones(marks.shape), marks, lesion)
    assert not uniform.flagged and uniform.mark_energy == pytest.approx(uniform.mark_chance)
    d = on_marks.to_dict()
    assert d["mark_lift"] == pytest.approx(on_marks.mark_energy / on_marks.mark_chance)
    # Without a lesion mask (a normal image) a map on the marks is still flagged.
    assert shortcut_score(_blob(marks.shape, marks), marks, None).flagged
    # An image without marks can never be flagged.
    none = shortcut_score(_blob(marks.shape, marks), np.zeros_like(marks), lesion)
    assert not none.flagged and none.mark_energy == 0.0


def test_calipers_on_the_lesion_count_as_lesion_not_as_marks():
    lesion = np.zeros((40, 40), bool)
    lesion[10:30, 10:30] = True
    marks = np.zeros((40, 40), bool)
    marks[18:22, 5:35] = True  # a measurement line across the lesion
    hm = lesion.astype(float)
    s = shortcut_score(hm, marks, lesion)
    assert s.mark_energy == 0.0 and not s.flagged and s.lesion_energy == pytest.approx(1.0)


def test_summary_flags_the_model_when_enough_maps_are_flagged():
    good = ShortcutScore(0.02, 0.02, 0.8, 0.1, False)
    bad = ShortcutScore(0.5, 0.02, 0.1, 0.1, True)
    no_marks = ShortcutScore(0.0, 0.0, 0.9, 0.1, False)
    ok = summarise_shortcuts([good] * 9 + [bad] + [no_marks] * 5)
    assert ok["n_maps"] == 15 and ok["n_with_marks"] == 10 and ok["flagged_share"] == pytest.approx(0.1)
    assert not ok["flagged"]
    worse = summarise_shortcuts([good] * 6 + [bad] * 4)
    assert worse["flagged"] and worse["mark_energy"] == pytest.approx((6 * 0.02 + 4 * 0.5) / 10)
    empty = summarise_shortcuts([no_marks])
    assert empty["n_with_marks"] == 0 and not empty["flagged"] and empty["mark_energy"] is None
    with pytest.raises(ValueError, match="same size"):
        shortcut_score(np.ones((4, 4)), np.zeros((5, 5), bool))
