"""Non-maximum suppression with MTCNN's conventions.

Boxes are (x1, y1, x2, y2) with inclusive integer-style extents, so a box's width is
``x2 - x1 + 1`` (the MATLAB original's convention, kept by every port). Two overlap
measures: ``union`` (IoU) and ``min`` (intersection over the smaller area, used after O-Net).

``union`` runs in OpenCV (``cv2.dnn.NMSBoxes``, C++) with widths passed as ``w + 1``,
which gives exactly the +1 convention; ``min`` has no library implementation and runs as
a vectorised numpy loop. ``benchmarks/bench_nms.py`` compares the two on real candidates.
"""

from __future__ import annotations

from enum import Enum

import cv2
import numpy as np


class Overlap(str, Enum):
    UNION = "union"
    MIN = "min"


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: Overlap) -> np.ndarray:
    """Greedy NMS; returns kept indices, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if overlap is Overlap.MIN:
            ratio = inter / np.minimum(areas[i], areas[rest])
        else:
            ratio = inter / (areas[i] + areas[rest] - inter)
        order = rest[ratio <= threshold]
    return np.asarray(keep, dtype=np.intp)


def nms_opencv(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """IoU NMS in OpenCV's C++ implementation, with the +1 extent convention."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    rects = np.empty((len(boxes), 4), dtype=np.float64)
    rects[:, 0:2] = boxes[:, 0:2]
    rects[:, 2:4] = boxes[:, 2:4] - boxes[:, 0:2] + 1
    kept = cv2.dnn.NMSBoxes(rects, scores.astype(np.float32), 0.0, float(threshold))
    return np.asarray(kept, dtype=np.intp).reshape(-1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: Overlap = Overlap.UNION) -> np.ndarray:
    """Indices of the boxes kept, highest score first."""
    if overlap is Overlap.UNION:
        return nms_opencv(boxes, scores, threshold)
    return nms_numpy(boxes, scores, threshold, overlap)
