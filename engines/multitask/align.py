"""Face alignment: dlib's 5-point landmarks inside each detector box, then dlib chips.

MTCNN's 5 points (eye centres, nose tip, mouth corners) are not the points dlib's chip
template is defined on (eye corners, base of the nose), and aligning with them costs
accuracy (README, "Alignment", has the measurements). dlib's 5-point regression-tree
model, run inside the square around the MTCNN box, gives the points the embedding, age
and gender nets were trained with, in about 0.45 ms per face. Chips are cut by dlib
itself (``get_face_chip_details`` + ``extract_image_chip``), one chip per size, each
from the original image, as the age and gender models' reference does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import WeightFormatError
from engines.store.specs import ChipSpec


def square_box(box: np.ndarray, scale: float) -> tuple[int, int, int, int]:
    """The square of side ``scale * max(w, h)`` around a box's centre, as integer
    (left, top, right, bottom) with right/bottom inclusive (dlib's rectangle)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    size = max(1, round(side))
    return left, top, left + size - 1, top + size - 1


class FaceAligner:
    """Landmarks and chips for faces of one RGB image. Thread-safe (dlib's predictor is
    read-only once loaded)."""

    # Side of the square (relative to MTCNN's box) the landmark model looks in; chosen by
    # verification accuracy on the shared pairs (README, "Alignment").
    BOX_SCALE = 1.0

    def __init__(self, shape_predictor: Path) -> None:
        import dlib

        self._dlib = dlib
        try:
            self._predictor = dlib.shape_predictor(str(shape_predictor))
        except RuntimeError as exc:
            raise WeightFormatError(f"{shape_predictor}: not a dlib shape predictor: {exc}") from exc
        probe = self._predictor(np.zeros((16, 16, 3), np.uint8), dlib.rectangle(0, 0, 15, 15))
        if probe.num_parts != 5:
            raise WeightFormatError(f"{shape_predictor} predicts {probe.num_parts} points, expected 5")

    def landmarks(self, rgb: np.ndarray, box: np.ndarray) -> Any:
        """dlib's 5 points (a ``dlib.full_object_detection``) inside ``box`` (x1, y1, x2, y2)."""
        return self._predictor(rgb, self._dlib.rectangle(*square_box(box, self.BOX_SCALE)))

    def chips(self, rgb: np.ndarray, shape: Any, specs: Sequence[ChipSpec]) -> list[np.ndarray]:
        """One aligned uint8 RGB chip per spec; pixels outside the image are black."""
        dlib = self._dlib
        return [
            np.asarray(dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, spec.size, spec.padding)))
            for spec in specs
        ]

    @staticmethod
    def points(shape: Any) -> np.ndarray:
        """(5, 2) float32 landmark coordinates of a dlib shape."""
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float32)


ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""Where the 5 points (left eye, right eye, nose tip, left and right mouth corner; image
left/right) go in a 112 px ArcFace chip: the template SFace and the ArcFace family expect."""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) that maps ``src`` points onto
    ``dst`` with the least squared error (Umeyama 1991, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("the landmarks coincide; no alignment is possible")
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def _template_transform(points: np.ndarray, box: np.ndarray | None, template: np.ndarray) -> np.ndarray:
    """The similarity taking ``points`` onto ``template``; for landmarks that coincide, the
    one taking the 112 px ArcFace template laid over ``box`` (its side the box's) instead."""
    try:
        return similarity_transform(points, template)
    except ValueError:
        if box is None:
            raise
        x1, y1, x2, y2 = (float(v) for v in box)
        scale = max(x2 - x1, y2 - y1, 1.0) / 112.0
        laid = ARCFACE_TEMPLATE * scale + [(x1 + x2) / 2 - 56 * scale, (y1 + y2) / 2 - 56 * scale]
        return similarity_transform(laid, template)


def arcface_chip(rgb: np.ndarray, points: np.ndarray, size: int = 112, box: np.ndarray | None = None) -> np.ndarray:
    """The ``size`` px chip whose 5 points (``points``, (5, 2) in image pixels) land on the
    ArcFace template; pixels outside the image are black. Landmarks that coincide (a face
    mostly outside the image) fall back to the template laid over ``box`` (x1, y1, x2, y2)."""
    import cv2

    matrix = _template_transform(points, box, ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


STORED_CHIP_SIZE = 256
"""Side of the face chip a gallery keeps per template (``gallery reembed`` re-runs any
recognizer's alignment on it): the ArcFace template scaled to the central 128 px, so the
eyes are about 40 px apart (as in dlib's 150 px chip) with a face's width of margin."""


def stored_chip(image: np.ndarray, box: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An upright face chip for storage, with the face's box and 5 points in its pixels.

    Returns (chip of ``STORED_CHIP_SIZE`` px, same colour order as ``image``; box (4,);
    points (5, 2)). The box is the bounding box of the original box's rotated corners.
    """
    import cv2

    size = STORED_CHIP_SIZE
    matrix = _template_transform(points, box, ARCFACE_TEMPLATE * (size / 2 / 112.0) + size / 4)
    chip = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))
    x1, y1, x2, y2 = (float(v) for v in box)
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) @ matrix[:, :2].T + matrix[:, 2]
    mapped_box = np.clip(np.concatenate([corners.min(0), corners.max(0)]), 0, size).astype(np.float32)
    mapped_points = (np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return chip, mapped_box, mapped_points
