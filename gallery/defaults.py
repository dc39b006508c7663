"""Shipped default decision thresholds, one per embedding model.

Computed with ``facestream gallery calibrate --pairs ../shared/data/faces/pairs.csv``
(target FMR 1e-3): the 334 labelled pairs of the shared set, each photo's largest face
through the full pipeline (MTCNN, dlib 5-point alignment, the embedding net). Galleries
calibrated on the operator's own pairs store their own threshold, which takes precedence.
"""

from __future__ import annotations

from engines.store.catalog import EMBEDDING_MODEL_ID
from gallery.calibration import Calibration

DEFAULT_CALIBRATIONS: dict[str, Calibration] = {
    EMBEDDING_MODEL_ID: Calibration(
        threshold=0.9353,
        target_fmr=1e-3,
        method="normal fit to impostor scores",
        genuine_pairs=167,
        impostor_pairs=167,
        fmr=0.0,
        fnmr=0.024,
        impostor_mean=0.8354,
        impostor_std=0.0323,
        genuine_mean=0.9661,
    ),
}
