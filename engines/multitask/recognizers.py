"""The identity recognizers and the measured facts each decision rests on.

A :class:`RecognizerProfile` names a recognizer's embedding space and carries its score
statistics, measured by ``benchmarks/eval_recognizers.py`` on the CelebA ``val`` split
(350 people, never used to set thresholds or report results): the mean and spread of
different-person (impostor) and same-person (genuine) cosines. The tracker derives its
appearance gates from them, and the fused recognizer its weights, so no cosine constant
is tied to one network.

SFace's space is centred (:mod:`engines.multitask.centre`): its embedding is
``unit(unit(e) - mean)``, the raw embedding less the component every face shares. The
space id names the centre's sha256; embeddings of the raw space FaceStream shipped before
(``sface-2021dec@fb143eea``, and the fused space built on it) are retired and mapped
exactly into the new ones by :func:`upgrade_space`.

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
from engines.multitask.centre import centre_embeddings, shipped_centre


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
SFACE_STATS = ScoreStats(impostor_mean=0.0133, impostor_std=0.0940, genuine_mean=0.5489,
                         impostor_q99=0.2366, impostor_q999=0.3147)
FUSED_STATS = ScoreStats(impostor_mean=0.5943, impostor_std=0.0445, genuine_mean=0.8301,
                         impostor_q99=0.7020, impostor_q999=0.7362)


def fusion_weight(dlib: ScoreStats, sface: ScoreStats) -> float:
    """The dlib cosine's share: inverse impostor spreads, normalised to sum to 1."""
    a, b = 1.0 / dlib.impostor_std, 1.0 / sface.impostor_std
    return a / (a + b)


_WEIGHT = round(fusion_weight(DLIB_STATS, SFACE_STATS), 4)

SFACE_CENTRE_SHA256 = "a9f2dbb0a52a8f7a1f45f47f2d8460e3c7388200169e10b7137735b4cf952533"
"""sha256 of ``engines/multitask/weights/sface-centre.json``: checked on load, named in the space ids."""
_CENTRE = f"centre-{SFACE_CENTRE_SHA256[:8]}"

PROFILES: dict[Recognizer, RecognizerProfile] = {
    Recognizer.DLIB: RecognizerProfile(Recognizer.DLIB, "dlib-resnet-v1@55533b28", 128, DLIB_STATS, 0.9286),
    Recognizer.SFACE: RecognizerProfile(Recognizer.SFACE, f"sface-2021dec@fb143eea-{_CENTRE}", 128, SFACE_STATS,
                                        0.3141),
    Recognizer.FUSED: RecognizerProfile(
        Recognizer.FUSED, f"fused-dlib-sface@55533b28-fb143eea-{_CENTRE}-w{_WEIGHT:.4f}", 256,
        FUSED_STATS, 0.7353, fusion_weight=_WEIGHT,
    ),
}

RAW_SFACE_SPACE = "sface-2021dec@fb143eea"
"""The raw SFace space FaceStream shipped before the centre (retired)."""
RAW_FUSED_SPACE, RAW_FUSED_WEIGHT = "fused-dlib-sface@55533b28-fb143eea-w0.6999", 0.6999
"""The fused space built on the raw SFace space (retired), and its dlib weight."""
RETIRED_SPACES: dict[str, tuple[str, int]] = {
    RAW_SFACE_SPACE: (PROFILES[Recognizer.SFACE].model_id, 128),
    RAW_FUSED_SPACE: (PROFILES[Recognizer.FUSED].model_id, 256),
}
"""Retired space id -> (the space it maps into exactly, its dimensions)."""


def profile(recognizer: Recognizer | str) -> RecognizerProfile:
    return PROFILES[Recognizer(recognizer)]


def profile_for_model(model_id: str) -> RecognizerProfile | None:
    """The profile whose embedding space is ``model_id``, if this FaceStream knows it."""
    return next((p for p in PROFILES.values() if p.model_id == model_id), None)


def fuse(dlib: np.ndarray, sface: np.ndarray, weight: float) -> np.ndarray:
    """(N, 256) fused unit embeddings from (N, 128) unit dlib and SFace embeddings."""
    return np.concatenate([np.sqrt(weight) * dlib, np.sqrt(1.0 - weight) * sface], axis=1).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def sface_identity(raw: np.ndarray) -> np.ndarray:
    """SFace's embeddings in the shipped space: ``unit(unit(raw) - centre)``, (N, 128)."""
    return centre_embeddings(_unit(raw), shipped_centre(SFACE_CENTRE_SHA256))


def upgrade_space(space_id: str, vectors: np.ndarray) -> tuple[str, np.ndarray]:
    """Unit vectors of a retired space mapped exactly into the space that replaced it
    (``(space_id, vectors)`` unchanged for a current or unknown space)."""
    if space_id not in RETIRED_SPACES:
        return space_id, vectors
    target, dim = RETIRED_SPACES[space_id]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{space_id} vectors have {dim} dimensions, got shape {vectors.shape}")
    if space_id == RAW_SFACE_SPACE:
        return target, sface_identity(vectors)
    w = RAW_FUSED_WEIGHT
    dlib, sface = vectors[:, :128] / np.sqrt(w), vectors[:, 128:] / np.sqrt(1.0 - w)
    return target, fuse(_unit(dlib), sface_identity(sface), PROFILES[Recognizer.FUSED].fusion_weight)
