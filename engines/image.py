"""Image input: validation, colour conversion, size limits, and decoding files.

Detectors take 8-bit arrays: BGR (OpenCV's convention, the default), RGB when the caller
says so, grayscale (H, W) or (H, W, 1), and 4-channel images (alpha is dropped).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engines.config import OversizePolicy
from engines.errors import ImageTooLargeError, InvalidImageError
from engines.fileio import read_image_bytes

# Refuse to decode files above this many pixels whatever the detector's limit: a
# 30000 x 30000 JPEG is 2.7 GB of pixels (a decompression bomb). Below Pillow's own
# guard (2 x 89.5 M pixels), so that our message, with the dimensions, is the one seen.
MAX_DECODE_PIXELS = 150_000_000


class ColorOrder(str, Enum):
    BGR = "bgr"
    RGB = "rgb"


@dataclass(frozen=True)
class PreparedImage:
    """An RGB uint8 image ready for a detector, and how it maps to the caller's image."""

    rgb: np.ndarray
    width: int
    """Width of the caller's image."""
    height: int
    scale: float
    """``rgb`` size / caller's size: 1.0 unless the image was downscaled."""


def to_rgb(image: np.ndarray, color: ColorOrder | str = ColorOrder.BGR) -> np.ndarray:
    """Validate an 8-bit image array and return it as contiguous RGB (H, W, 3)."""
    color = ColorOrder(color)
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f"expected an 8-bit image (dtype uint8), got {image.dtype}; scale and convert it first, "
            "for example (img * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InvalidImageError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"empty image ({image.shape[1]}x{image.shape[0]} pixels)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if color is ColorOrder.BGR else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(image, code)
    if color is ColorOrder.BGR:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def normalise_pixels(pixels: np.ndarray, mean: tuple[float, float, float], scale: float) -> np.ndarray:
    """uint8 RGB of shape (..., 3) -> float32 ``(pixel - mean[c]) * scale``, same shape.

    Uses OpenCV's per-channel scalar subtract on the array viewed as one image: numpy
    broadcasting over a length-3 last axis is about 8x slower."""
    flat = np.ascontiguousarray(pixels).reshape(-1, pixels.shape[-2] if pixels.ndim > 2 else 1, 3)
    out = cv2.subtract(flat, (*mean, 0.0), dtype=cv2.CV_32F)
    out *= np.float32(scale)
    return out.reshape(pixels.shape)


def prepare_image(
    image: np.ndarray,
    *,
    color: ColorOrder | str,
    max_pixels: int,
    policy: OversizePolicy,
) -> PreparedImage:
    """Validate, convert to RGB and apply the pixel limit (downscale or refuse)."""
    height, width = image.shape[:2] if isinstance(image, np.ndarray) and image.ndim >= 2 else (0, 0)
    pixels = height * width
    if pixels > max_pixels:
        if policy is OversizePolicy.REFUSE:
            raise ImageTooLargeError(
                f"image of {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} pixels "
                "(raise max_image_pixels, or choose the 'downscale' oversize policy)"
            )
        factor = math.sqrt(max_pixels / pixels)
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        rgb = cv2.resize(to_rgb(image, color), size, interpolation=cv2.INTER_AREA)
        return PreparedImage(rgb, width, height, size[0] / width)
    return PreparedImage(to_rgb(image, color), width, height, 1.0)


def decode_image(data: bytes, *, name: str = "image", max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, BMP, TIFF, ...) to BGR uint8.

    EXIF orientation is applied. Raises :class:`InvalidImageError` for empty, truncated or
    unrecognised data and :class:`ImageTooLargeError` above ``max_pixels`` (checked from the
    header, before any pixel is decoded).
    """
    if not data:
        raise InvalidImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its default limit
        raise ImageTooLargeError(f"{name}: refused before decoding: {exc}") from None
    except Exception:
        width = height = 0  # not a format Pillow knows; OpenCV may still decode it
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the decode limit of {max_pixels} pixels"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InvalidImageError(f"{name}: not a decodable image (corrupt, truncated or unsupported format)")
    return image


def read_image_file(path: Path | str, *, max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Read and decode an image file to BGR uint8; see :func:`read_image_bytes` and
    :func:`decode_image`."""
    return decode_image(read_image_bytes(path), name=str(path), max_pixels=max_pixels)
