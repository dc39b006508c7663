"""Face chips a gallery keeps beside its templates, so it can move to another recognizer
without the enrolment photos (``facestream gallery reembed``).

A chip is the enrolled face, upright, 256 px (:func:`engines.multitask.align.stored_chip`),
as a JPEG of about 15 KB, with the face's box and 5 landmarks in its pixels. It is
biometric data: it lives only in the gallery database and is erased with its identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np

from engines.detections import FaceDetections
from engines.multitask.align import STORED_CHIP_SIZE, stored_chip
from gallery.errors import GalleryCorruptError

JPEG_QUALITY = 95


@dataclass(frozen=True)
class FaceChip:
    jpeg: bytes
    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]

    @classmethod
    def from_face(cls, image_bgr: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> FaceChip:
        chip, mapped_box, points = stored_chip(image_bgr, box, landmarks)
        ok, encoded = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("could not encode the face chip")
        return cls(encoded.tobytes(), tuple(float(v) for v in mapped_box),  # type: ignore[arg-type]
                   tuple((float(x), float(y)) for x, y in points))

    def geometry_json(self) -> str:
        return json.dumps({"box": [round(v, 2) for v in self.box], "landmarks": [[round(x, 2), round(y, 2)]
                                                                                for x, y in self.landmarks]})

    @classmethod
    def from_stored(cls, jpeg: bytes, geometry: str) -> FaceChip:
        try:
            raw = json.loads(geometry)
            box = tuple(float(v) for v in raw["box"])
            landmarks = tuple((float(x), float(y)) for x, y in raw["landmarks"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GalleryCorruptError(f"a stored face chip has unreadable geometry: {exc}") from exc
        if len(box) != 4 or len(landmarks) != 5:
            raise GalleryCorruptError("a stored face chip has unreadable geometry")
        return cls(jpeg, box, landmarks)  # type: ignore[arg-type]

    def decode(self) -> tuple[np.ndarray, FaceDetections]:
        """The chip (BGR) and its one face, as the multi-task network takes them."""
        image = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (STORED_CHIP_SIZE, STORED_CHIP_SIZE):
            raise GalleryCorruptError("a stored face chip is not a readable 256 px JPEG")
        face = FaceDetections(np.array([self.box]), np.ones(1), np.array([self.landmarks]),
                              STORED_CHIP_SIZE, STORED_CHIP_SIZE)
        return image, face
