"""Threshold calibration to a target false-match rate."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.calibration import calibrate


def test_normal_fit_when_too_few_impostors() -> None:
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.8, 0.03, 200)
    genuine = rng.normal(0.97, 0.01, 200)
    result = calibrate(np.concatenate([impostor, genuine]), np.r_[np.zeros(200, bool), np.ones(200, bool)], 1e-3)
    assert result.method == "normal fit to impostor scores"
    assert result.threshold == pytest.approx(0.8 + 3.09 * 0.03, abs=0.01)
    assert result.fmr == 0.0 and result.fnmr < 0.01


def test_empirical_quantile_when_enough_impostors() -> None:
    rng = np.random.default_rng(1)
    impostor = rng.uniform(0, 1, 10_000)
    result = calibrate(np.r_[impostor, [1.0]], np.r_[np.zeros(10_000, bool), [True]], 1e-2)
    assert result.method == "empirical"
    assert result.fmr <= 1e-2 and result.threshold == pytest.approx(0.99, abs=0.005)


@pytest.mark.parametrize(
    "scores, same, fmr, message",
    [
        ([0.1, 0.9], [False, True], 1e-3, "at least 2 different-person"),
        ([0.1, 0.2, 0.9], [False, False, True], 1.5, "target FMR"),
    ],
)
def test_bad_input(scores: list, same: list, fmr: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(np.array(scores), np.array(same), fmr)
