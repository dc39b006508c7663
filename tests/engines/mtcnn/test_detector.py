"""MTCNN detector on real photos and video frames from ../shared/data/faces."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.config import DetectorConfig, OversizePolicy, RuntimeConfig
from engines.detections import LANDMARK_NAMES, FaceDetections, iou_matrix
from engines.errors import ImageTooLargeError, InvalidImageError
from engines.image import read_image_file
from engines.mtcnn.detector import MTCNNDetector
from engines.runtime.engine import EngineRuntime
from engines.store.model_store import ModelStore

TWO_PEOPLE = "face_recognition/examples/two_people.jpg"
VIDEO = "face_recognition/examples/short_hamilton_clip.mp4"


def assert_same_faces(a: FaceDetections, b: FaceDetections, *, box_tol_px: float = 0.5) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=box_tol_px)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=box_tol_px)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


# --- the acceptance checks of the detector issue -----------------------------------------


def test_group_photos_recall_and_false_positives(detector: MTCNNDetector, faces_dir: Path) -> None:
    """43 hand-made boxes on 9 group photos: recall >= 0.95 at IoU >= 0.4, <= 3 false positives."""
    truth: dict[str, list[list[float]]] = defaultdict(list)
    with (faces_dir / "face_boxes.csv").open() as f:
        for row in csv.DictReader(f):
            left, top, width, height = (float(row[k]) for k in ("left", "top", "width", "height"))
            truth[row["path"]].append([left, top, left + width, top + height])
    assert len(truth) == 9 and sum(map(len, truth.values())) == 43
    found = false_positives = 0
    for path, boxes in truth.items():
        faces = detector.detect(read_image_file(faces_dir / path))
        gt = np.asarray(boxes)
        if len(faces) == 0:
            continue
        overlap = iou_matrix(faces.boxes, gt)
        found += int((overlap.max(axis=0) >= 0.4).sum())
        false_positives += int((overlap.max(axis=1) < 0.4).sum())
    assert found / 43 >= 0.95, f"recall {found}/43"
    assert false_positives <= 3


def test_every_single_face_photo_yields_a_face(detected, single_face_paths: list[Path]) -> None:  # type: ignore[no-untyped-def]
    assert len(single_face_paths) >= 130
    missed = [str(p) for p in single_face_paths if len(detected(p)[1]) == 0]
    assert missed == []


def test_landmark_order_on_upright_faces(detected, single_face_paths: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Left eye left of right eye (image coordinates), eyes above nose above mouth."""
    assert LANDMARK_NAMES == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    checked = 0
    for path in single_face_paths[::4]:
        faces = detected(path)[1]
        best = faces[int(np.argmax(faces.areas))]
        (le, re, nose, ml, mr) = best.landmarks[0]
        assert le[0] < re[0], path
        assert ml[0] < mr[0], path
        assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1]), path
        x1, y1, x2, y2 = best.boxes[0]
        assert np.all((best.landmarks[0] >= [x1, y1]) & (best.landmarks[0] <= [x2, y2])), path
        checked += 1
    assert checked >= 30


def test_faces_found_in_decoded_video_frames(detector: MTCNNDetector, faces_dir: Path) -> None:
    """The two performers of the clip are visible throughout: nearly every frame has a face."""
    with av.open(str(faces_dir / VIDEO)) as container:
        frames = [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i % 10 == 0]
    assert len(frames) == 28
    results = detector.detect_batch(frames)
    with_faces = sum(1 for r in results if len(r) >= 1)
    assert with_faces >= 26
    assert all(r.image_width == 640 and r.image_height == 360 for r in results)


# --- inputs ---------------------------------------------------------------------------------


def test_rgb_argument_matches_bgr_input(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    bgr = read_face_image(TWO_PEOPLE)
    from_bgr = detector.detect(bgr)
    from_rgb = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), color="rgb")
    assert len(from_bgr) == 2
    assert_same_faces(from_bgr, from_rgb, box_tol_px=0.0)


def test_colour_order_matters(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    """Feeding BGR as if it were RGB changes the scores: the argument is not ignored."""
    bgr = read_face_image(TWO_PEOPLE)
    right = detector.detect(bgr)
    wrong = detector.detect(bgr, color="rgb")
    assert len(right) != len(wrong) or not np.allclose(right.scores, wrong.scores, atol=1e-6)


def test_grayscale_and_four_channel_images(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    bgr = read_face_image(TWO_PEOPLE)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert len(detector.detect(gray)) == 2
    assert len(detector.detect(gray[:, :, None])) == 2
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert_same_faces(detector.detect(bgra), detector.detect(bgr), box_tol_px=0.0)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 0, 3), np.uint8), "empty image"),  # nothing to look at
        (np.zeros((100, 100, 3), np.float32), "uint8"),  # float pixels
        (np.zeros((100, 100, 2), np.uint8), "shape"),  # two channels
        (np.zeros((4, 100, 100, 3), np.uint8), "shape"),  # a batch, not an image
        ("not an image", "numpy array"),  # not an array at all
    ],
)
def test_bad_images_raise_typed_errors(detector: MTCNNDetector, image: object, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message) as info:
        detector.detect(image)  # type: ignore[arg-type]
    assert info.value.skippable


def test_batch_error_names_the_bad_image(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    good = read_face_image(TWO_PEOPLE)
    with pytest.raises(InvalidImageError, match="image 1 of 2"):
        detector.detect_batch([good, np.zeros((0, 5, 3), np.uint8)])


def test_tiny_and_faceless_images_give_no_faces(detector: MTCNNDetector) -> None:
    assert len(detector.detect(np.zeros((5, 7, 3), np.uint8))) == 0
    assert len(detector.detect(np.full((480, 640, 3), 128, np.uint8))) == 0
    empty = detector.detect(np.zeros((11, 11), np.uint8))
    assert (empty.boxes.shape, empty.landmarks.shape, empty.image_width) == ((0, 4), (0, 5, 2), 11)


def test_oversized_image_is_downscaled_and_mapped_back(
    model_store: ModelStore, runtime: EngineRuntime, read_face_image  # type: ignore[no-untyped-def]
) -> None:
    image = read_face_image(TWO_PEOPLE)  # 1126 x 661 = 744,286 pixels
    full = MTCNNDetector.create(DetectorConfig(min_face_size_px=40), runtime=runtime, store=model_store)
    small = MTCNNDetector.create(
        DetectorConfig(min_face_size_px=40, max_image_pixels=200_000), runtime=runtime, store=model_store
    )
    reference, shrunk = full.detect(image), small.detect(image)
    assert (shrunk.image_width, shrunk.image_height) == (1126, 661)
    assert len(shrunk) == len(reference) == 2
    assert iou_matrix(shrunk.boxes, reference.boxes).max(axis=1).min() > 0.8


def test_oversized_image_is_refused_when_configured(
    model_store: ModelStore, runtime: EngineRuntime, read_face_image  # type: ignore[no-untyped-def]
) -> None:
    strict = MTCNNDetector.create(
        DetectorConfig(max_image_pixels=200_000, oversize_policy=OversizePolicy.REFUSE),
        runtime=runtime,
        store=model_store,
    )
    with pytest.raises(ImageTooLargeError, match="1126x661"):
        strict.detect(read_face_image(TWO_PEOPLE))


# --- batching and determinism ----------------------------------------------------------------


def test_batch_matches_one_by_one(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    images = [
        read_face_image(TWO_PEOPLE),
        read_face_image("dlib/examples/faces/2008_002470.jpg"),
        read_face_image("dlib/examples/faces/2007_007763.jpg"),  # same size as the one before: shared P-Net calls
        read_face_image("dlib/examples/faces/dogs.jpg"),
    ]
    batched = detector.detect_batch(images)
    assert [len(b) for b in batched][:3] == [2, 6, 7]
    for image, result in zip(images, batched):
        assert_same_faces(result, detector.detect(image), box_tol_px=0.01)


def test_results_do_not_depend_on_worker_count(
    model_store: ModelStore, detector: MTCNNDetector, read_face_image  # type: ignore[no-untyped-def]
) -> None:
    image = read_face_image("dlib/examples/faces/2008_007676.jpg")
    with EngineRuntime(RuntimeConfig(device="cpu", workers=1)) as single, EngineRuntime(
        RuntimeConfig(device="cpu", workers=3)
    ) as triple:
        one = MTCNNDetector.create(runtime=single, store=model_store).detect(image)
        three = MTCNNDetector.create(runtime=triple, store=model_store).detect(image)
    assert len(one) == 7
    assert_same_faces(one, three, box_tol_px=0.01)
    assert_same_faces(one, detector.detect(image), box_tol_px=0.01)


def test_detections_are_read_only(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    faces = detector.detect(read_face_image(TWO_PEOPLE))
    with pytest.raises(ValueError):
        faces.boxes[0, 0] = 0.0
    assert faces.scores[0] >= faces.scores[1]
    assert faces.to_json()[0].keys() == {"box", "score", "landmarks"}
