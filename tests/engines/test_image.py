"""Image validation, conversion, limits and decoding."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engines.config import OversizePolicy
from engines.errors import ImageTooLargeError, InvalidImageError
from engines.image import decode_image, prepare_image, read_image_bytes, read_image_file, to_rgb


def test_bgr_is_swapped_and_rgb_is_kept() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 10  # blue in BGR
    image[..., 2] = 200
    assert to_rgb(image)[0, 0].tolist() == [200, 0, 10]
    assert to_rgb(image, "rgb")[0, 0].tolist() == [10, 0, 200]


def test_gray_and_alpha_are_converted() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb(gray).shape == (3, 4, 3)
    assert np.array_equal(to_rgb(gray)[..., 1], gray)
    bgra = np.dstack([np.full((3, 4), c, np.uint8) for c in (1, 2, 3, 255)])
    assert to_rgb(bgra)[0, 0].tolist() == [3, 2, 1]
    assert to_rgb(bgra, "rgb")[0, 0].tolist() == [1, 2, 3]


def test_downscale_policy_keeps_the_aspect_and_reports_the_scale() -> None:
    image = np.zeros((1000, 2000, 3), np.uint8)
    prepared = prepare_image(image, color="bgr", max_pixels=500_000, policy=OversizePolicy.DOWNSCALE)
    h, w = prepared.rgb.shape[:2]
    assert h * w <= 500_000 and abs(w / h - 2.0) < 0.01
    assert (prepared.width, prepared.height) == (2000, 1000)
    assert prepared.scale == pytest.approx(w / 2000)


def test_refuse_policy() -> None:
    with pytest.raises(ImageTooLargeError, match="2000x1000 = 2000000 pixels exceeds the limit of 500000"):
        prepare_image(np.zeros((1000, 2000, 3), np.uint8), color="bgr", max_pixels=500_000,
                      policy=OversizePolicy.REFUSE)


def test_decode_real_jpeg_and_png(faces_dir: Path) -> None:
    jpeg = read_image_file(faces_dir / "face_recognition/examples/two_people.jpg")
    assert jpeg.shape == (661, 1126, 3) and jpeg.dtype == np.uint8
    rgba_png = read_image_file(faces_dir / "face_recognition/tests/test_images/32bit.png")
    assert rgba_png.ndim == 3 and rgba_png.shape[2] == 3


def test_corrupt_and_empty_data_are_refused(faces_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="empty file"):
        decode_image(b"", name="x.jpg")
    with pytest.raises(InvalidImageError, match="not a decodable image"):
        decode_image(b"GIF89a but not really" * 10, name="x.gif")
    with pytest.raises(InvalidImageError, match="missing.jpg: no such file"):
        read_image_file(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImageError, match="a folder, not an image file"):
        read_image_file(tmp_path)
    with pytest.raises(InvalidImageError, match="/dev/zero: not a regular file"):  # would never end
        read_image_file("/dev/zero")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2000)
    with pytest.raises(InvalidImageError, match="2000 bytes, more than the limit of 1000"):
        read_image_bytes(big, max_bytes=1000)


def test_truncated_jpeg_never_crashes(faces_dir: Path) -> None:
    data = (faces_dir / "face_recognition/examples/two_people.jpg").read_bytes()
    for cut in (20, len(data) // 3, len(data) - 100):
        try:
            image = decode_image(data[:cut], name="truncated.jpg")
        except InvalidImageError:
            continue
        assert image.dtype == np.uint8 and image.ndim == 3  # libjpeg fills the missing part


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with almost no pixel data: a decompression bomb shape."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="900000000 pixels"):
        decode_image(png_header_only(30000, 30000), name="bomb.png")
    with pytest.raises(ImageTooLargeError, match="13000x13000 = 169000000 pixels exceeds the decode limit"):
        decode_image(png_header_only(13000, 13000), name="big.png")
    with pytest.raises(ImageTooLargeError, match="exceeds the decode limit of 1000 pixels"):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40)).save(buffer, format="PNG")
        decode_image(buffer.getvalue(), name="small.png", max_pixels=1000)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape[:2] == (40, 20)
    assert cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)[10, 10, 0] > 200
