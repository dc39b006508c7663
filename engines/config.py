"""Engine configuration: keyword-only dataclasses validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from engines.errors import ConfigError


class DeviceRequest(str, Enum):
    """Where inference should run. ``auto`` picks CUDA when a GPU and a CUDA-enabled
    runtime are present, else CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Settings of the inference runtime shared by every model a process loads."""

    device: DeviceRequest = DeviceRequest.AUTO
    workers: int = 0
    """Model calls a stage may run concurrently; 0 = one per available CPU on CPU, 1 on GPU."""
    intra_op_threads: int = 1
    """Threads inside one model call (ONNX Runtime intra-op); 0 = the runtime's default.
    With ``workers`` splitting the work, 1 is fastest for FaceStream's small networks."""
    inter_op_threads: int = 1
    """Threads across independent operators of one call; 0 = the runtime's default."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "device", DeviceRequest(self.device))
        except ValueError:
            choices = ", ".join(d.value for d in DeviceRequest)
            raise ConfigError(f"device must be one of {choices}, got {self.device!r}") from None
        for name in ("workers", "intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0 (0 = automatic), got {value!r}")


class OversizePolicy(str, Enum):
    """What to do with an image above ``max_image_pixels``."""

    DOWNSCALE = "downscale"
    """Detect on a copy shrunk to the limit; results are mapped back to the original's pixels."""
    REFUSE = "refuse"
    """Raise :class:`engines.errors.ImageTooLargeError`."""


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """MTCNN cascade parameters. Defaults are those of the published MTCNN procedure."""

    min_face_size_px: int = 20
    """Smallest face side (pixels of the input image) the image pyramid looks for."""
    scale_factor: float = 0.709
    """Ratio between consecutive pyramid levels."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """Face-probability thresholds of P-Net, R-Net and O-Net."""
    max_image_pixels: int = 4096 * 4096
    """Images with more pixels are downscaled or refused, by ``oversize_policy``."""
    oversize_policy: OversizePolicy = OversizePolicy.DOWNSCALE
    max_batch_crops: int = 512
    """Largest batch sent to R-Net or O-Net in one call (bounds memory on crowded frames)."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_face_size_px, int) or self.min_face_size_px < 12:
            raise ConfigError(
                f"min_face_size_px must be an integer >= 12 (MTCNN's window), got {self.min_face_size_px!r}"
            )
        if not 0.1 <= float(self.scale_factor) <= 0.95:
            raise ConfigError(f"scale_factor must be in [0.1, 0.95], got {self.scale_factor!r}")
        thresholds = tuple(float(t) for t in self.thresholds)
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise ConfigError(f"thresholds must be three probabilities in (0, 1), got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", thresholds)
        if not isinstance(self.max_image_pixels, int) or self.max_image_pixels < 144:
            raise ConfigError(f"max_image_pixels must be an integer >= 144, got {self.max_image_pixels!r}")
        try:
            object.__setattr__(self, "oversize_policy", OversizePolicy(self.oversize_policy))
        except ValueError:
            raise ConfigError(
                f"oversize_policy must be 'downscale' or 'refuse', got {self.oversize_policy!r}"
            ) from None
        if not isinstance(self.max_batch_crops, int) or self.max_batch_crops < 1:
            raise ConfigError(f"max_batch_crops must be an integer >= 1, got {self.max_batch_crops!r}")
