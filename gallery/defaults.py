"""Shipped default decision thresholds, one per embedding model.

Computed by ``benchmarks/eval_recognizers.py`` (the same rule as ``facestream gallery
calibrate --labels``): the empirical impostor quantile at a false-match rate (FMR) of 1e-3
on the CelebA ``test`` split of ``../shared/data/face_train`` (1,750 photos of 350 people:
3,492 same-person and 1,523,386 different-person pairs with a face found; research
licence, used to measure only). Each photo's largest face went through the full pipeline
(MTCNN, the recognizer's alignment and network; SFace's space centred,
``engines.multitask.centre``). Galleries calibrated on the operator's own data store their
own threshold, which takes precedence.
"""

from __future__ import annotations

from engines.config import Recognizer
from engines.multitask.recognizers import profile
from gallery.calibration import Calibration

_PAIRS = {"genuine_pairs": 3492, "impostor_pairs": 1523386, "target_fmr": 1e-3, "method": "empirical"}

DEFAULT_CALIBRATIONS: dict[str, Calibration] = {
    profile(Recognizer.DLIB).model_id: Calibration(
        threshold=0.9286, fmr=1e-3, fnmr=0.1578,
        impostor_mean=0.8318, impostor_std=0.0382, genuine_mean=0.9472, **_PAIRS,  # type: ignore[arg-type]
    ),
    profile(Recognizer.SFACE).model_id: Calibration(
        threshold=0.3141, fmr=1e-3, fnmr=0.0725,
        impostor_mean=0.0119, impostor_std=0.0947, genuine_mean=0.5625, **_PAIRS,  # type: ignore[arg-type]
    ),
    profile(Recognizer.FUSED).model_id: Calibration(
        threshold=0.7353, fmr=1e-3, fnmr=0.0647,
        impostor_mean=0.5935, impostor_std=0.0447, genuine_mean=0.8354, **_PAIRS,  # type: ignore[arg-type]
    ),
}


LINK_FMR = 1e-5
LINK_THRESHOLDS: dict[str, float] = {
    profile(Recognizer.DLIB).model_id: 0.9568,
    profile(Recognizer.SFACE).model_id: 0.4251,
    profile(Recognizer.FUSED).model_id: 0.7835,
}
"""The score at which two unidentified sightings are linked under one pseudonym: the
empirical impostor quantile at FMR 1e-5 per comparison on the same CelebA ``test`` pairs
(``benchmarks/eval_recognizers.py``, ``threshold_at_fmr_1e-5``). A new sighting is compared
with every pseudonymous one, so the per-comparison rate must be far below the watch list's."""
