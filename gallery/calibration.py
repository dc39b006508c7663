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


def labelled_pair_scores(
    embeddings: np.ndarray, labels: np.ndarray, *, max_impostors: int = 2_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pair scores of a labelled photo set: every same-label pair, and every different-label
    pair or, when there are more than ``max_impostors``, that many drawn at random (seeded,
    without repeats). Returns (scores, same) as :func:`calibrate` takes them."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    n = len(labels)
    if embeddings.shape[0] != n:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {n} labels")
    rows, cols = np.triu_indices(n, 1) if n * (n - 1) // 2 <= 4 * max_impostors else (None, None)
    if rows is not None:
        same = labels[rows] == labels[cols]
        genuine_pairs = (rows[same], cols[same])
        impostor_pairs = (rows[~same], cols[~same])
        if len(impostor_pairs[0]) > max_impostors:
            pick = np.random.default_rng(seed).choice(len(impostor_pairs[0]), max_impostors, replace=False)
            impostor_pairs = (impostor_pairs[0][pick], impostor_pairs[1][pick])
    else:  # too many pairs to list: genuine pairs per label, impostors drawn at random
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1
        groups = np.split(order, bounds)
        g = [np.triu_indices(len(m), 1) for m in groups]
        genuine_pairs = (np.concatenate([m[i] for m, (i, _) in zip(groups, g)]),
                         np.concatenate([m[j] for m, (_, j) in zip(groups, g)]))
        rng = np.random.default_rng(seed)
        drawn: set[tuple[int, int]] = set()
        while len(drawn) < max_impostors:
            a, b = rng.integers(0, n, (2, max_impostors))
            for i, j in zip(np.minimum(a, b), np.maximum(a, b)):
                if i != j and labels[i] != labels[j]:
                    drawn.add((int(i), int(j)))
                    if len(drawn) == max_impostors:
                        break
        pairs = np.array(sorted(drawn))
        impostor_pairs = (pairs[:, 0], pairs[:, 1])
    chunk = 1 << 20  # pairs scored at a time (bounds memory)
    scores = [
        np.concatenate([np.zeros(0, np.float32)] + [
            np.einsum("ij,ij->i", embeddings[a[k : k + chunk]], embeddings[b[k : k + chunk]])
            for k in range(0, len(a), chunk)
        ])
        for a, b in (genuine_pairs, impostor_pairs)
    ]
    same_out = np.concatenate([np.ones(len(scores[0]), bool), np.zeros(len(scores[1]), bool)])
    return np.concatenate(scores).astype(np.float64), same_out
