"""The detector's typed, columnar result for one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Landmark order. "Left" is the image's left (the subject's right)."""


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), (x1, y1, x2, y2) with
    exclusive x2/y2; returns (N, M)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def frozen_column(name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """A read-only float32 copy of ``value``, checked against ``shape`` (None: any size)."""
    array = np.array(value, dtype=np.float32, copy=True)
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        pretty = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {pretty}, got {array.shape}")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class FaceDetections:
    """Faces found in one image, in that image's pixel coordinates.

    - ``boxes``: (N, 4) float32, x1, y1, x2, y2 (x2/y2 exclusive), clipped to the image.
    - ``scores``: (N,) float32, the final stage's face probability, highest first.
    - ``landmarks``: (N, 5, 2) float32, (x, y) in :data:`LANDMARK_NAMES` order.

    Arrays are read-only copies; indexing (integer arrays, slices, boolean masks) returns a
    new instance.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    image_width: int
    image_height: int

    def __post_init__(self) -> None:
        boxes = frozen_column("boxes", self.boxes, (None, 4))
        n = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", frozen_column("scores", self.scores, (n,)))
        object.__setattr__(self, "landmarks", frozen_column("landmarks", self.landmarks, (n, 5, 2)))
        if self.image_width <= 0 or self.image_height <= 0:
            raise ValueError(f"image size must be positive, got {self.image_width}x{self.image_height}")

    @classmethod
    def empty(cls, image_width: int, image_height: int) -> FaceDetections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), image_width, image_height)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> FaceDetections:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return FaceDetections(
            self.boxes[index], self.scores[index], self.landmarks[index], self.image_width, self.image_height
        )

    @property
    def areas(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def to_json(self, *, decimals: int = 2) -> list[dict[str, Any]]:
        """One dict per face: ``box``, ``score`` and ``landmarks`` as plain lists."""
        return [
            {
                "box": [round(float(v), decimals) for v in box],
                "score": round(float(score), 5),
                "landmarks": [[round(float(x), decimals), round(float(y), decimals)] for x, y in points],
            }
            for box, score, points in zip(self.boxes, self.scores, self.landmarks)
        ]
