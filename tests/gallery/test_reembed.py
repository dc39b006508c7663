"""Moving a gallery to another recognizer from its stored face chips, and erasing the chips."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.multitask.network import MultiTaskNet
from engines.multitask.recognizers import profile
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from gallery.store import SCHEMA_VERSION, GalleryStore
from stream_worker.photos import FaceAnalyzer

NOT_ENROLLED = ("kit_harington", "rose_leslie", "tom_cruise")


def _gallery(path: Path, recognizer: Recognizer) -> Gallery:
    space = profile(recognizer)
    return Gallery(path, model=space.model_id, dim=space.dim)


def _enrol(gallery: Gallery, analyzer: FaceAnalyzer, identity_photos: dict[str, list[str]], faces_dir: Path) -> None:
    enroller = PhotoEnroller(gallery, analyzer, EnrolPolicy(min_quality=0.0))
    for identity, photos in sorted(identity_photos.items()):
        if identity not in NOT_ENROLLED:
            outcome = enroller.enrol(identity, [(photos[0], (faces_dir / photos[0]).read_bytes())])
            assert outcome[0].status == "enrolled", outcome


@pytest.fixture(scope="module")
def analyzers(detector, multitask: MultiTaskNet, dlib_multitask: MultiTaskNet) -> dict[Recognizer, FaceAnalyzer]:  # type: ignore[no-untyped-def]
    assert multitask.profile.recognizer is Recognizer.SFACE  # the session's default network
    return {Recognizer.DLIB: FaceAnalyzer(detector, dlib_multitask), Recognizer.SFACE: FaceAnalyzer(detector, multitask)}


def test_a_gallery_moved_to_another_recognizer_identifies_as_one_enrolled_with_it(
    analyzers: dict[Recognizer, FaceAnalyzer], identity_photos: dict[str, list[str]], faces_dir: Path,
    largest_face, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Enrolled with dlib, re-embedded to SFace from its chips: every probe photo (the other
    photos of the enrolled people, and three people never enrolled) gets the same decision
    and score (within 0.6 impostor spreads) as in a gallery enrolled with SFace from the photos, and the same
    top identity, except a stranger's between near-tied people."""
    moved = _gallery(tmp_path / "moved.db", Recognizer.DLIB)
    _enrol(moved, analyzers[Recognizer.DLIB], identity_photos, faces_dir)
    moved.close()
    moved = _gallery(tmp_path / "moved.db", Recognizer.SFACE)
    assert moved.stats()["searchable_templates"] == 0  # nothing in the SFace space yet
    counts = moved.reembed(analyzers[Recognizer.SFACE].embed_chip)
    enrolled = len(identity_photos) - len(NOT_ENROLLED)
    assert counts == {"chips": enrolled, "added": enrolled, "already_present": 0, "converted": 0}
    assert moved.reembed(analyzers[Recognizer.SFACE].embed_chip)["added"] == 0  # idempotent

    direct = _gallery(tmp_path / "direct.db", Recognizer.SFACE)
    _enrol(direct, analyzers[Recognizer.SFACE], identity_photos, faces_dir)

    probes = [p for identity, photos in sorted(identity_photos.items())
              for p in (photos if identity in NOT_ENROLLED else photos[1:])]
    assert len(probes) >= 50
    assert DEFAULT_RECOGNIZER is Recognizer.SFACE  # largest_face embeds with the default recognizer
    queries = np.stack([largest_face(p)[1].embeddings[0] for p in probes])
    # a chip is a JPEG of the aligned face, not the photo: scores agree to 0.6 impostor spreads
    # (0.056 for centred SFace; the largest difference seen is 0.052, a stranger's)
    tolerance = 0.6 * profile(Recognizer.SFACE).stats.impostor_std
    for a, b in zip(moved.search(queries, k=3), direct.search(queries, k=3)):
        assert a[0].decision == b[0].decision and a[0].score == pytest.approx(b[0].score, abs=tolerance)
        if a[0].identity_id != b[0].identity_id:
            # only a stranger's nearest enrolled person may differ, and only where two are tied
            # within the tolerance (one stranger scores 0.117 against two people)
            assert b[0].decision == "unknown"
            assert any(m.identity_id == b[0].identity_id and m.score >= a[0].score - tolerance for m in a)
    moved.close()
    direct.close()


def test_erasure_removes_the_chips(analyzers: dict[Recognizer, FaceAnalyzer], faces_dir: Path, tmp_path: Path) -> None:
    gallery = _gallery(tmp_path / "g.db", Recognizer.SFACE)
    photo = "face_recognition/examples/knn_examples/train/obama/obama.jpg"
    data = (faces_dir / photo).read_bytes()
    enroller = PhotoEnroller(gallery, analyzers[Recognizer.SFACE], EnrolPolicy(min_quality=0.0))
    assert enroller.enrol("obama", [(photo, data)])[0].status == "enrolled"
    [chip] = list(gallery.store.chips())
    assert chip.identity_id == "obama" and chip.models == {gallery.model}
    jpeg = chip.chip.jpeg
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < 40_000
    gallery.remove("obama")
    assert gallery.store.chip_count() == 0 and list(gallery.store.chips()) == []
    gallery.close()
    raw = (tmp_path / "g.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("g.db-*"))
    assert jpeg[100:164] not in raw  # overwritten, not left in free pages or the journal


def test_a_version_1_gallery_is_upgraded_in_place(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path / "old.db")
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("DROP TABLE chips; UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    db.close()
    store = GalleryStore(tmp_path / "old.db")
    assert store.chip_count() == 0
    assert store._meta("schema_version") == str(SCHEMA_VERSION)
    store.close()
