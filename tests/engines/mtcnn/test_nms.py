"""Non-maximum suppression: tables of small cases, and OpenCV against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from engines.mtcnn.nms import Overlap, nms, nms_numpy, nms_opencv


@pytest.mark.parametrize(
    "boxes, scores, threshold, overlap, kept",
    [
        # two identical boxes: the higher score survives
        ([[0, 0, 9, 9], [0, 0, 9, 9]], [0.8, 0.9], 0.5, Overlap.UNION, [1]),
        # disjoint boxes all survive, highest score first
        ([[0, 0, 9, 9], [20, 20, 29, 29], [40, 0, 49, 9]], [0.7, 0.9, 0.8], 0.5, Overlap.UNION, [1, 2, 0]),
        # half-overlapping (IoU 1/3 with the +1 convention) survives at 0.5 ...
        ([[0, 0, 9, 9], [5, 0, 14, 9]], [0.9, 0.8], 0.5, Overlap.UNION, [0, 1]),
        # ... but not at 0.3
        ([[0, 0, 9, 9], [5, 0, 14, 9]], [0.9, 0.8], 0.3, Overlap.UNION, [0]),
        # a small box inside a big one: IoU is low, the overlap over the smaller area is 1
        ([[0, 0, 99, 99], [10, 10, 29, 29]], [0.9, 0.8], 0.7, Overlap.UNION, [0, 1]),
        ([[0, 0, 99, 99], [10, 10, 29, 29]], [0.9, 0.8], 0.7, Overlap.MIN, [0]),
        # nothing in, nothing out
        (np.zeros((0, 4)), np.zeros(0), 0.5, Overlap.UNION, []),
        (np.zeros((0, 4)), np.zeros(0), 0.5, Overlap.MIN, []),
    ],
)
def test_nms_table(boxes: list, scores: list, threshold: float, overlap: Overlap, kept: list[int]) -> None:
    assert nms(np.asarray(boxes, float), np.asarray(scores, np.float32), threshold, overlap).tolist() == kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_opencv_union_equals_numpy_reference(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    corner = rng.uniform(0, 400, (n, 2)).round()
    side = rng.uniform(12, 90, (n, 1)).round()
    boxes = np.hstack([corner, corner + side])
    scores = rng.uniform(0.6, 1.0, n).astype(np.float32)
    expected = nms_numpy(boxes, scores, threshold, Overlap.UNION)
    assert 0 < len(expected) < n
    assert nms_opencv(boxes, scores, threshold).tolist() == expected.tolist()
