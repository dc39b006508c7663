"""FaceStream engines: model specs, the model store, inference backends and decoders.

Importing this package needs neither CUDA nor PyTorch; PyTorch is imported only when
weights are converted (``facestream models fetch``).
"""

from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
from engines.detections import LANDMARK_NAMES, FaceDetections
from engines.errors import FaceStreamError
from engines.image import ColorOrder, decode_image, read_image_file
from engines.model_store import ModelStore
from engines.mtcnn import MTCNNDetector
from engines.runtime import EngineRuntime

__all__ = [
    "LANDMARK_NAMES",
    "ColorOrder",
    "DetectorConfig",
    "DeviceRequest",
    "EngineRuntime",
    "FaceDetections",
    "FaceStreamError",
    "MTCNNDetector",
    "ModelStore",
    "OversizePolicy",
    "RuntimeConfig",
    "decode_image",
    "read_image_file",
]
