"""Similarity thresholds calibrated to a target false-match rate (FMR).

Given similarity scores of labelled pairs, the threshold is the score above which the
chosen fraction of different-person (impostor) pairs would be accepted:

- with at least 3 / FMR impostor pairs, the empirical (1 - FMR) quantile of their scores;
- with fewer (an FMR of 1e-3 cannot be read off 167 impostor pairs), the same quantile of
  a normal distribution fitted to their scores. The calibration records which was used,
  and the FMR and false non-match rate (FNMR) measured on the pairs at the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

DEFAULT_TARGET_FMR = 1e-3


@dataclass(frozen=True)
class Calibration:
    threshold: float
    target_fmr: float
    method: str
    """'empirical' or 'normal fit to impostor scores'."""
    genuine_pairs: int
    impostor_pairs: int
    fmr: float
    """Measured on the pairs at the threshold (resolution 1 / impostor_pairs)."""
    fnmr: float
    impostor_mean: float
    impostor_std: float
    genuine_mean: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(scores: np.ndarray, same: np.ndarray, target_fmr: float = DEFAULT_TARGET_FMR) -> Calibration:
    """The threshold for ``target_fmr`` from pair ``scores`` and their ``same`` labels."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if not 0 < target_fmr < 1:
        raise ValueError(f"target FMR must be in (0, 1), got {target_fmr}")
    impostor, genuine = scores[~same], scores[same]
    if len(impostor) < 2 or len(genuine) < 1:
        raise ValueError(f"need at least 2 different-person and 1 same-person pairs, got {len(impostor)} and {len(genuine)}")
    if len(impostor) >= math.ceil(3 / target_fmr):
        threshold = float(np.quantile(impostor, 1 - target_fmr, method="higher")) + 1e-9
        method = "empirical"
    else:
        fit = NormalDist(float(impostor.mean()), float(impostor.std(ddof=1)))
        threshold = fit.inv_cdf(1 - target_fmr)
        method = "normal fit to impostor scores"
    return Calibration(
        threshold=threshold,
        target_fmr=target_fmr,
        method=method,
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
        fmr=float(np.mean(impostor >= threshold)),
        fnmr=float(np.mean(genuine < threshold)),
        impostor_mean=float(impostor.mean()),
        impostor_std=float(impostor.std(ddof=1)),
        genuine_mean=float(genuine.mean()),
    )
