"""MTCNN decoding functions on hand-built arrays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.mtcnn import decode as dec
from engines.mtcnn.detector import balanced_groups, build_pyramid


def test_pyramid_of_a_640x375_image() -> None:
    """The published example: 9 levels, from 226x385 down to 15x25."""
    scales = dec.pyramid_scales(375, 640, min_face_px=20, factor=0.709)
    sizes = [dec.level_size(375, 640, s) for s in scales]
    assert len(sizes) == 9
    assert sizes[0] == (226, 385) and sizes[-1] == (15, 25)


@pytest.mark.parametrize(
    "height, width, min_face, levels",
    [
        (11, 500, 12, 0),  # shorter than one window: nothing to scan
        (12, 12, 12, 1),  # exactly one window
        (100, 100, 100, 1),  # the face fills the image
        (360, 640, 40, 7),  # larger minimum face: fewer levels
    ],
)
def test_pyramid_level_counts(height: int, width: int, min_face: int, levels: int) -> None:
    assert len(dec.pyramid_scales(height, width, min_face, 0.709)) == levels


def test_pnet_cell_geometry() -> None:
    """Cell (row i, col j) is the 12x12 window at (2j+1, 2i+1) in 1-based pixels of the level."""
    prob = np.zeros((3, 4), np.float32)
    prob[0, 0] = 0.9
    prob[2, 3] = 0.7
    reg = np.zeros((4, 3, 4), np.float32)
    reg[:, 2, 3] = [0.1, 0.2, 0.3, 0.4]
    at_full = dec.pnet_candidates(prob, reg, scale=1.0, threshold=0.6)
    assert at_full[:, :5].tolist() == [[1, 1, 12, 12, pytest.approx(0.9)], [7, 5, 18, 16, pytest.approx(0.7)]]
    assert at_full[1, 5:].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    at_half = dec.pnet_candidates(prob, reg, scale=0.5, threshold=0.8)
    assert at_half[:, :4].tolist() == [[2, 2, 24, 24]]


def test_square_keeps_the_centre() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0, 0.9]])
    out = dec.square(boxes)
    assert out[0, :4].tolist() == [0.0, 20.0, 40.0, 60.0]
    assert out[0, 4] == 0.9


def test_regress_uses_inclusive_width() -> None:
    boxes = np.array([[0.0, 0.0, 9.0, 19.0, 0.9]])  # 10 x 20 pixels
    out = dec.regress(boxes, np.array([[0.1, -0.1, 0.2, 0.5]]))
    assert out[0, :4].tolist() == pytest.approx([1.0, -2.0, 11.0, 29.0])


def test_to_image_coordinates_shifts_scales_and_clips() -> None:
    boxes = np.array([[1.0, 1.0, 12.0, 12.0, 0.9], [-5.0, 3.0, 700.0, 20.0, 0.8]])
    out = dec.to_image_coordinates(boxes, scale=0.5, width=640, height=360)
    assert out.tolist() == [[0.0, 0.0, 24.0, 24.0], [0.0, 4.0, 640.0, 40.0]]


def test_crop_resize_inside_and_outside_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (50, 60, 3)).astype(np.float32)
    fill = np.array([-0.5, -0.25, -1.0], np.float32)
    boxes = np.array([
        [11, 6, 34, 29, 0.9],  # inside: columns 10..33, rows 5..28 (0-based)
        [-9, -9, 10, 10, 0.9],  # sticks out at the top left
        [200, 200, 230, 230, 0.9],  # entirely outside
    ])
    crops = dec.crop_resize(image, boxes, 12, fill)
    assert crops.shape == (3, 12, 12, 3) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops[0], cv2.resize(image[5:29, 10:34], (12, 12), interpolation=cv2.INTER_AREA))
    assert np.allclose(crops[1, 0, 0], fill)  # the outside corner takes the fill value
    assert not np.allclose(crops[1, -1, -1], fill)  # the inside corner does not
    assert np.allclose(crops[2], fill)


def test_chained_pyramid_levels() -> None:
    image = np.random.default_rng(1).uniform(-1, 1, (120, 200, 3)).astype(np.float32)
    sizes = [(60, 100), (30, 50)]
    levels = build_pyramid(image, sizes)
    assert [lv.shape[:2] for lv in levels] == sizes
    np.testing.assert_array_equal(levels[1], cv2.resize(levels[0], (50, 30), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize(
    "weights, count, expected",
    [
        ([100, 50, 25, 12], 2, [[0], [1, 2, 3]]),  # a pyramid: level 0 alone against the rest
        ([5, 5, 5, 5], 2, [[0, 2], [1, 3]]),
        ([7], 4, [[0]]),  # never more groups than items
        ([3, 2, 1], 1, [[0, 1, 2]]),
    ],
)
def test_balanced_groups(weights: list[int], count: int, expected: list[list[int]]) -> None:
    assert balanced_groups(weights, count) == expected
