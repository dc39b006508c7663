"""The typed detection value and box IoU."""

from __future__ import annotations

import numpy as np
import pytest

from engines.detections import FaceDetections, iou_matrix


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),  # half overlapping: 50 / 150
        ([0, 0, 10, 10], [2, 2, 4, 4], 0.04),  # inside: 4 / 100
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # empty boxes: 0, not NaN
    ],
)
def test_iou_table(a: list, b: list, expected: float) -> None:
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


def test_iou_shape() -> None:
    assert iou_matrix(np.zeros((3, 4)), np.zeros((0, 4))).shape == (3, 0)


@pytest.mark.parametrize(
    "boxes, scores, landmarks, message",
    [
        (np.zeros((2, 3)), np.zeros(2), np.zeros((2, 5, 2)), r"boxes must have shape \(N, 4\)"),
        (np.zeros((2, 4)), np.zeros(3), np.zeros((2, 5, 2)), r"scores must have shape \(2\)"),
        (np.zeros((2, 4)), np.zeros(2), np.zeros((2, 4, 2)), r"landmarks must have shape \(2, 5, 2\)"),
    ],
)
def test_shapes_are_validated(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceDetections(boxes, scores, landmarks, 10, 10)


def test_indexing_and_masks() -> None:
    faces = FaceDetections(
        np.array([[0, 0, 4, 4], [1, 1, 9, 9], [2, 2, 3, 3]]), [0.9, 0.8, 0.7], np.zeros((3, 5, 2)), 10, 10
    )
    assert len(faces[faces.scores > 0.75]) == 2
    assert faces[1].boxes.tolist() == [[1, 1, 9, 9]]
    assert faces.areas.tolist() == [16, 64, 1]
    assert len(FaceDetections.empty(5, 5)) == 0
