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
