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
- ``engines.convert``: the only code that needs PyTorch: published weights to ONNX,
  checked numerically (``facestream models fetch``).
- ``engines.mtcnn``: the MTCNN face detector (cascade, decoders, NMS).
- ``engines.multitask``: alignment and the multi-task network (identity embedding, age,
  gender, pose, quality), and verification of two embeddings.

Importing this package needs neither CUDA nor PyTorch (nor dlib); dlib is imported when
the multi-task network is loaded.
"""

from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
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
    "DEFAULT_SIMILARITY_THRESHOLD",
    "LANDMARK_NAMES",
    "ColorOrder",
    "DetectorConfig",
    "DeviceRequest",
    "EngineRuntime",
    "FaceAttributes",
    "FaceDetections",
    "FaceStreamError",
    "MTCNNDetector",
    "ModelStore",
    "MultiTaskNet",
    "OversizePolicy",
    "RuntimeConfig",
    "Verification",
    "decode_image",
    "read_image_file",
    "verify",
]
