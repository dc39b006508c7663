"""The MTCNN face detector on ONNX Runtime.

Contract: :class:`MTCNNDetector` takes BGR images and returns one :class:`FaceDetections`
per image (boxes, scores, 5 landmarks); :meth:`MTCNNDetector.refine_batch` re-detects
only around given boxes (for tracked faces between full detections). Raw model outputs
are decoded by the pure-numpy functions of :mod:`engines.mtcnn.decode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.mtcnn.detector import MTCNNDetector

__all__ = [
    "MTCNNDetector",
]

__getattr__ = lazy_exports(__name__, {
    "MTCNNDetector": "engines.mtcnn.detector",
})
