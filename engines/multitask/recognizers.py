"""The identity recognizers and the measured facts each decision rests on.

A :class:`RecognizerProfile` names a recognizer's embedding space and carries its score
statistics, measured by ``benchmarks/eval_recognizers.py`` on the CelebA ``val`` split
(350 people, never used to set thresholds or report results): the mean and spread of
different-person (impostor) and same-person (genuine) cosines. The tracker derives its
appearance gates from them, and the fused recognizer its weights, so no cosine constant
is tied to one network.

The fused recognizer concatenates the two unit embeddings scaled by ``sqrt(w)`` and
``sqrt(1 - w)``: the result is a unit vector whose inner product with another is
``w * cos_dlib + (1 - w) * cos_sface``. With ``w`` proportional to 1 / (impostor spread),
this orders pairs exactly as the mean of the two z-normalised cosines does (the z-scores'
offsets are a constant), and a FAISS inner-product index searches it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.config import Recognizer


@dataclass(frozen=True)
class ScoreStats:
    """Cosine statistics of one embedding space on labelled pairs."""

    impostor_mean: float
    impostor_std: float
    genuine_mean: float
    impostor_q99: float
    """The cosine 1% of different-person pairs reach (empirical quantile)."""
    impostor_q999: float
    """The cosine 0.1% of different-person pairs reach (empirical quantile)."""

    @property
    def track_min_cosine(self) -> float:
        """Below this a face never joins a track: the score 1% of different people reach
        (dlib: 0.911, near the 0.90 the tracker was tuned with on the shared clip). Empirical,
        not a normal fit: SFace's impostor tail is heavier (mean + 2.33 sd would be 0.32)."""
        return self.impostor_q99

    @property
    def track_reacquire_cosine(self) -> float:
        """Needed to rejoin a track by appearance alone: the score 0.1% of different people
        reach (dlib: 0.928; tuned: 0.93)."""
        return self.impostor_q999


@dataclass(frozen=True)
class RecognizerProfile:
    recognizer: Recognizer
    model_id: str
    """The embedding space's id: templates with another id are never compared with these."""
    dim: int
    stats: ScoreStats
    verify_threshold: float
    """The 1:1 verification threshold (``facestream verify``): the empirical impostor quantile
    at a false-match rate of 1e-3 on the CelebA ``test`` split (like the watch list's,
    ``gallery.defaults``)."""
    fusion_weight: float = 1.0
    """For the fused recognizer: the dlib cosine's weight (SFace's is 1 - this)."""


# Measured by benchmarks/eval_recognizers.py on the CelebA val split (1,749 photos of 350
# people, 3,5xx genuine and 1.5 million impostor pairs; README, "Recognizers").
DLIB_STATS = ScoreStats(impostor_mean=0.8323, impostor_std=0.0385, genuine_mean=0.9453,
                        impostor_q99=0.9110, impostor_q999=0.9282)
SFACE_STATS = ScoreStats(impostor_mean=0.1135, impostor_std=0.0898, genuine_mean=0.5935,
                         impostor_q99=0.3233, impostor_q999=0.3934)
FUSED_STATS = ScoreStats(impostor_mean=0.6166, impostor_std=0.0439, genuine_mean=0.8398,
                         impostor_q99=0.7218, impostor_q999=0.7542)


def fusion_weight(dlib: ScoreStats, sface: ScoreStats) -> float:
    """The dlib cosine's share: inverse impostor spreads, normalised to sum to 1."""
    a, b = 1.0 / dlib.impostor_std, 1.0 / sface.impostor_std
    return a / (a + b)


_WEIGHT = round(fusion_weight(DLIB_STATS, SFACE_STATS), 4)

PROFILES: dict[Recognizer, RecognizerProfile] = {
    Recognizer.DLIB: RecognizerProfile(Recognizer.DLIB, "dlib-resnet-v1@55533b28", 128, DLIB_STATS, 0.9286),
    Recognizer.SFACE: RecognizerProfile(Recognizer.SFACE, "sface-2021dec@fb143eea", 128, SFACE_STATS, 0.3926),
    Recognizer.FUSED: RecognizerProfile(
        Recognizer.FUSED, f"fused-dlib-sface@55533b28-fb143eea-w{_WEIGHT:.4f}", 256,
        FUSED_STATS, 0.7532, fusion_weight=_WEIGHT,
    ),
}


def profile(recognizer: Recognizer | str) -> RecognizerProfile:
    return PROFILES[Recognizer(recognizer)]


def profile_for_model(model_id: str) -> RecognizerProfile | None:
    """The profile whose embedding space is ``model_id``, if this FaceStream knows it."""
    return next((p for p in PROFILES.values() if p.model_id == model_id), None)


def fuse(dlib: np.ndarray, sface: np.ndarray, weight: float) -> np.ndarray:
    """(N, 256) fused unit embeddings from (N, 128) unit dlib and SFace embeddings."""
    return np.concatenate([np.sqrt(weight) * dlib, np.sqrt(1.0 - weight) * sface], axis=1).astype(np.float32)
