"""FaceStream engines: model specs, the model store, inference backends and decoders.

Importing this package needs neither CUDA nor PyTorch (nor dlib); PyTorch is imported
only when weights are converted (``facestream models fetch``), dlib when the multi-task
network is loaded.
"""

from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
from engines.detections import LANDMARK_NAMES, FaceDetections
from engines.errors import FaceStreamError
from engines.face_attributes import FaceAttributes
from engines.image import ColorOrder, decode_image, read_image_file
from engines.model_store import ModelStore
from engines.mtcnn import MTCNNDetector
from engines.multitask import MultiTaskNet
from engines.runtime import EngineRuntime
from engines.verification import DEFAULT_SIMILARITY_THRESHOLD, Verification, verify

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
