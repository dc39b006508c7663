"""The recognizers: alignment, SFace against OpenCV's own pipeline, fusion, thresholds."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.config import Recognizer
from engines.multitask.align import ARCFACE_TEMPLATE, arcface_chip, similarity_transform
from engines.multitask.network import MultiTaskNet
from engines.multitask.recognizers import PROFILES, fuse, profile, profile_for_model, sface_identity
from engines.multitask.verification import verify
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import SFACE, SFACE_BUNDLE
from engines.store.model_store import ModelStore


@pytest.fixture(scope="module")
def nets(model_store: ModelStore, runtime: EngineRuntime, multitask: MultiTaskNet,
         dlib_multitask: MultiTaskNet) -> dict[Recognizer, MultiTaskNet]:
    """The session's networks (SFace is the default), and a fused one."""
    fused = MultiTaskNet.create(runtime=runtime, store=model_store, recognizer=Recognizer.FUSED)
    return {Recognizer.SFACE: multitask, Recognizer.DLIB: dlib_multitask, Recognizer.FUSED: fused}


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = np.radians(17.0), 2.3, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ rotation.T + shift
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    assert np.allclose(points @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE, atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_sface_chip_and_embedding_match_opencvs_own_pipeline(
    detected, model_store: ModelStore, nets: dict[Recognizer, MultiTaskNet], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Oracle: OpenCV's FaceRecognizerSF (alignCrop + feature, on the converted graph without
    its second output, the pooled feature: OpenCV takes one output and cannot load the
    published graph) gives the same chip (to rounding) and embedding, which FaceStream then
    centres (``sface_identity``)."""
    import onnx

    graph = onnx.load(str(model_store.bundle_dir(SFACE_BUNDLE) / SFACE.file))
    kept = [o for o in graph.graph.output if o.name == SFACE.outputs[0].name]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(tmp_path / "sface-embedding.onnx"))
    opencv = cv2.FaceRecognizerSF.create(str(tmp_path / "sface-embedding.onnx"), "")
    for photo in ("face_recognition/examples/obama-720p.jpg", "face_recognition/examples/two_people.jpg"):
        image, faces = detected(photo)
        for i in range(len(faces)):
            box, points = faces.boxes[i], faces.landmarks[i]
            row = np.array([[box[0], box[1], box[2] - box[0], box[3] - box[1], *points.reshape(-1), faces.scores[i]]],
                           np.float32)
            theirs = opencv.alignCrop(image, row)
            ours = cv2.cvtColor(arcface_chip(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), points), cv2.COLOR_RGB2BGR)
            assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1
            expected = sface_identity(opencv.feature(theirs))[0]
            embedding = nets[Recognizer.SFACE].analyze([image], [faces[[i]]])[0].embeddings[0]
            assert float(embedding @ expected / np.linalg.norm(expected)) > 0.9999


def test_fused_scores_are_the_weighted_cosines(detected, nets: dict[Recognizer, MultiTaskNet]) -> None:  # type: ignore[no-untyped-def]
    image, faces = detected("face_recognition/examples/two_people.jpg")
    parts = {r: nets[r].analyze([image], [faces])[0].embeddings for r in Recognizer}
    w = profile(Recognizer.FUSED).fusion_weight
    assert parts[Recognizer.FUSED].shape == (len(faces), 256)
    assert np.allclose(parts[Recognizer.FUSED], fuse(parts[Recognizer.DLIB], parts[Recognizer.SFACE], w), atol=1e-6)
    fused = parts[Recognizer.FUSED][0] @ parts[Recognizer.FUSED][1]
    expected = w * parts[Recognizer.DLIB][0] @ parts[Recognizer.DLIB][1] + (1 - w) * (
        parts[Recognizer.SFACE][0] @ parts[Recognizer.SFACE][1])
    assert fused == pytest.approx(expected, abs=1e-5)


def test_embedding_spaces_are_distinct_and_known() -> None:
    ids = [p.model_id for p in PROFILES.values()]
    assert len(set(ids)) == 3
    assert all(profile_for_model(i) is PROFILES[r] for r, i in zip(PROFILES, ids))
    assert profile_for_model("someone-elses-model@1") is None


@pytest.mark.parametrize("recognizer", list(Recognizer))
def test_verification_on_the_labelled_pairs_at_the_shipped_threshold(
    recognizer: Recognizer, detected, nets: dict[Recognizer, MultiTaskNet], faces_dir: Path  # type: ignore[no-untyped-def]
) -> None:
    """pairs.csv is an independent check of thresholds set on CelebA: accuracy >= 0.99 at
    each recognizer's 1:1 threshold, and no different-person pair accepted."""
    with (faces_dir / "pairs.csv").open() as f:
        pairs = list(csv.DictReader(f))
    embeddings = {}
    for path in {r[k] for r in pairs for k in ("path_a", "path_b")}:
        image, faces = detected(path)
        embeddings[path] = nets[recognizer].analyze([image], [faces[[int(np.argmax(faces.areas))]]])[0].descriptors[0]
    threshold = profile(recognizer).verify_threshold
    results = [(verify(embeddings[r["path_a"]], embeddings[r["path_b"]], threshold), r["same"] == "1") for r in pairs]
    assert np.mean([v.same == same for v, same in results]) >= 0.99
    assert not any(v.same for v, same in results if not same)


def test_embedding_only_the_faces_asked_for(  # type: ignore[no-untyped-def]
        detected, nets: dict[Recognizer, MultiTaskNet], runtime: EngineRuntime, model_store: ModelStore) -> None:
    """``embed_if`` skips the recognizer for some faces: their embeddings are NaN, the others
    are exactly what a full analysis gives. With the trained heads (one SFace call for both),
    age, gender, attributes and expression are skipped with the embedding; with the Cydral
    nets they are computed for every face."""
    image, faces = detected("dlib/examples/faces/2008_002470.jpg")
    assert len(faces) >= 4
    net = nets[Recognizer.SFACE]
    full = net.analyze([image], [faces])[0]
    asked: list[tuple[int, int, float]] = []

    def every_other(k: int, row: int, quality: float) -> bool:
        asked.append((k, row, quality))
        return row % 2 == 0

    part = net.analyze([image], [faces], embed_if=every_other)[0]
    assert [a[1] for a in asked] == list(range(len(faces)))
    assert np.allclose([a[2] for a in asked], full.qualities)
    assert np.isnan(part.embeddings[1::2]).all()
    assert np.allclose(part.embeddings[::2], full.embeddings[::2], atol=1e-6)
    assert np.allclose(part.qualities, full.qualities) and np.allclose(part.poses, full.poses)
    for name in ("ages", "age_stds", "male_probs", "attribute_probs", "expression_probs"):
        got, want = getattr(part, name), getattr(full, name)
        assert np.isnan(got[1::2]).all() and np.allclose(got[::2], want[::2], atol=1e-5), name
    cydral = MultiTaskNet.create(runtime=runtime, store=model_store, heads="cydral")
    full, part = cydral.analyze([image], [faces])[0], cydral.analyze([image], [faces], embed_if=every_other)[0]
    assert np.isnan(part.embeddings[1::2]).all() and np.allclose(part.ages, full.ages)
    assert np.allclose(part.male_probs, full.male_probs) and part.attribute_probs.shape == (len(faces), 0)
