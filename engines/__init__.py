"""FaceStream engines: from pixels to faces, with models declared as data.

Contract: ``engines`` knows nothing of ``gallery`` or ``stream_worker``. It takes images
(BGR uint8 arrays) and returns typed, read-only values: :class:`FaceDetections` from the
detector, :class:`FaceAttributes` (embedding, age, gender, pose, quality) from the
multi-task network. Every model runs through one :class:`EngineRuntime` per process,
which decides CPU or GPU once and reports what each backend really loaded.

- ``engines.runtime``: the device decision, inference backends (ONNX Runtime) and the
  worker pool model stages split their work over.
- ``engines.store``: model specs and the catalog, fetching published weights, the model
  cache (checksums on every load).
- ``engines.convert``: published weights to ONNX, checked numerically (``facestream models
  fetch``); with ``engines.training``, the only code that needs PyTorch.
- ``engines.mtcnn``: the MTCNN face detector (cascade, decoders, NMS).
- ``engines.multitask``: alignment and the multi-task network (identity embedding, age,
  gender, facial attributes, expression, pose, quality; the trained task heads read the
  recognizer's trunk), and verification of two embeddings.
- ``engines.training``: training those heads (``facestream train``); needs PyTorch.

Importing this package needs neither CUDA nor PyTorch (nor dlib); dlib is imported when
the multi-task network is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig, StoreConfig
    from engines.detections import LANDMARK_NAMES, FaceDetections
    from engines.errors import FaceStreamError
    from engines.image import ColorOrder, decode_image, read_image_file
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.attributes import FaceAttributes
    from engines.multitask.network import MultiTaskNet
    from engines.multitask.verification import DEFAULT_SIMILARITY_THRESHOLD, Verification, verify
    from engines.runtime.engine import EngineRuntime
    from engines.store.model_store import ModelStore

__all__ = [
    "ColorOrder",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "DetectorConfig",
    "DeviceRequest",
    "EngineRuntime",
    "FaceAttributes",
    "FaceDetections",
    "FaceStreamError",
    "LANDMARK_NAMES",
    "MTCNNDetector",
    "ModelStore",
    "MultiTaskNet",
    "OversizePolicy",
    "RuntimeConfig",
    "StoreConfig",
    "Verification",
    "decode_image",
    "read_image_file",
    "verify",
]

__getattr__ = lazy_exports(__name__, {
    "ColorOrder": "engines.image",
    "DEFAULT_SIMILARITY_THRESHOLD": "engines.multitask.verification",
    "DetectorConfig": "engines.config",
    "DeviceRequest": "engines.config",
    "EngineRuntime": "engines.runtime.engine",
    "FaceAttributes": "engines.multitask.attributes",
    "FaceDetections": "engines.detections",
    "FaceStreamError": "engines.errors",
    "LANDMARK_NAMES": "engines.detections",
    "MTCNNDetector": "engines.mtcnn.detector",
    "ModelStore": "engines.store.model_store",
    "MultiTaskNet": "engines.multitask.network",
    "OversizePolicy": "engines.config",
    "RuntimeConfig": "engines.config",
    "StoreConfig": "engines.config",
    "Verification": "engines.multitask.verification",
    "decode_image": "engines.image",
    "read_image_file": "engines.image",
    "verify": "engines.multitask.verification",
})
