"""Temperature scaling and the expected calibration error, against numbers computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest

from busi_web.model.calibration import (
    T_MAX,
    T_MIN,
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int = 4000, factor: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and a model that reports softmax(factor * z): over-confident by ``factor``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, 3))
    true = _softmax(z)
    labels = np.array([rng.choice(3, p=p) for p in true])
    return _softmax(factor * z), labels


def test_the_fit_recovers_the_over_confidence_and_the_ece_falls():
    probs, labels = _overconfident(factor=2.5)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.08)
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(apply_temperature(probs, t), labels)
    assert before > 0.1 and after < 0.03
    # The ranking of classes never changes: accuracy is the same.
    assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()


def test_apply_temperature_is_softmax_of_scaled_logits():
    z = np.array([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    p = _softmax(z)
    assert np.allclose(apply_temperature(p, 1.0), p, atol=1e-6)
    assert np.allclose(apply_temperature(p, 2.0), _softmax(z / 2), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0)
    with pytest.raises(ValueError, match="K >= 2"):
        apply_temperature(np.ones((3, 1)), 1.0)


def test_the_fit_only_softens_by_default_and_keeps_to_its_bounds():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]] * 20)
    labels = np.array([0, 1, 2] * 20)
    assert fit_temperature(probs, labels) == pytest.approx(T_MIN, abs=1e-3)
    wrong = np.array([1, 2, 0] * 20)  # confidently wrong: flatten as far as allowed
    assert fit_temperature(probs, wrong) == pytest.approx(T_MAX, rel=1e-3)
    with pytest.raises(ValueError, match="one label per row"):
        fit_temperature(probs, labels[:5])
    # The default fit only softens (T >= 1); asked to, it sharpens as far as it is allowed.
    assert T_MIN == 1.0 and fit_temperature(probs, labels, low=0.5) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="0 < low < high"):
        fit_temperature(probs, labels, low=2.0, high=1.0)


def test_ece_and_bins_by_hand():
    # Two images at confidence 0.9 (one right), two at 0.6 (both right): |0.9 - 0.5| and |0.6 - 1.0|.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    table = reliability_bins(probs, labels, bins=10)
    assert [b["count"] for b in table] == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert table[8]["accuracy"] == 0.5 and table[5]["confidence"] == pytest.approx(0.6)
    summary = calibration_summary(probs, labels, 1.0)
    assert summary["ece_before"] == pytest.approx(summary["ece_after"], abs=1e-6) and summary["n"] == 4
