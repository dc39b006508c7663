"""Face analysis: alignment and the multi-task network.

Contract: :meth:`MultiTaskNet.analyze` takes images and their :class:`FaceDetections`
and returns one :class:`FaceAttributes` per image, row i for detection i: L2-normalised
identity embedding, age and its spread, P(male), head pose, sharpness and quality.
:func:`verify` compares two embeddings against a threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.multitask.attributes import FaceAttributes
    from engines.multitask.network import MultiTaskNet
    from engines.multitask.verification import DEFAULT_SIMILARITY_THRESHOLD, Verification, verify

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "FaceAttributes",
    "MultiTaskNet",
    "Verification",
    "verify",
]

__getattr__ = lazy_exports(__name__, {
    "DEFAULT_SIMILARITY_THRESHOLD": "engines.multitask.verification",
    "FaceAttributes": "engines.multitask.attributes",
    "MultiTaskNet": "engines.multitask.network",
    "Verification": "engines.multitask.verification",
    "verify": "engines.multitask.verification",
})
