"""Configuration is validated once, on construction, with messages that say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
from engines.errors import ConfigError


def test_defaults_are_the_published_mtcnn_parameters() -> None:
    config = DetectorConfig()
    assert (config.min_face_size_px, config.scale_factor, config.thresholds) == (20, 0.709, (0.6, 0.7, 0.7))
    assert config.oversize_policy is OversizePolicy.DOWNSCALE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_face_size_px": 8}, "min_face_size_px: .*greater than or equal to 12"),  # below the 12 px window
        ({"min_face_size_px": 20.5}, "min_face_size_px: Input should be a valid integer"),
        ({"min_face_size_px": True}, "min_face_size_px: Input should be a valid integer"),  # a bool is not one
        ({"scale_factor": 1.0}, "scale_factor: .*less than or equal to 0.95"),  # the pyramid would never shrink
        ({"scale_factor": float("nan")}, "scale_factor: Input should be a finite number"),
        ({"thresholds": (0.6, 0.7)}, "thresholds"),
        ({"thresholds": (0.6, 0.7, 1.2)}, "three probabilities"),
        ({"max_image_pixels": 10}, "max_image_pixels"),
        ({"oversize_policy": "crop"}, "'downscale' or 'refuse'"),
        ({"max_batch_crops": 0}, "max_batch_crops"),
    ],
)
def test_detector_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DetectorConfig(**kwargs)


def test_strings_become_enums() -> None:
    assert DetectorConfig(oversize_policy="refuse").oversize_policy is OversizePolicy.REFUSE  # type: ignore[arg-type]
    assert RuntimeConfig(device="cpu").device is DeviceRequest.CPU  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"workers": -1}, "workers: .*greater than or equal to 0"),
        ({"intra_op_threads": True}, "intra_op_threads: Input should be a valid integer"),
        ({"force_cpu": 1}, "force_cpu: Input should be a valid boolean"),
    ],
)
def test_runtime_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RuntimeConfig(**kwargs)


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        DetectorConfig(20)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        DetectorConfig().min_face_size_px = 30  # type: ignore[misc]
