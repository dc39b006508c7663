"""Identification on real photos: enrol one photo per person, search all the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from stream_worker.photos import FaceAnalyzer

# Named people with several photos, left out of the gallery: their photos must come back unknown.
NOT_ENROLLED = ("kit_harington", "rose_leslie", "tom_cruise")


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, detector, multitask, faces_dir: Path,  # type: ignore[no-untyped-def]
             identity_photos: dict[str, list[str]]):
    gallery = Gallery(tmp_path_factory.mktemp("gallery") / "people.db")
    enroller = PhotoEnroller(gallery, FaceAnalyzer(detector, multitask), EnrolPolicy(min_quality=0.0))
    for identity, photos in sorted(identity_photos.items()):
        if identity in NOT_ENROLLED:
            continue
        outcome = enroller.enrol(identity, [(photos[0], (faces_dir / photos[0]).read_bytes())])
        assert outcome[0].status == "enrolled", outcome
    yield gallery
    gallery.close()


def test_top1_accuracy_on_every_other_photo(enrolled: Gallery, largest_face, identity_photos: dict[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    probes = [(identity, p) for identity, photos in identity_photos.items() if identity not in NOT_ENROLLED
              for p in photos[1:]]
    assert len(probes) >= 50
    results = enrolled.search(np.stack([largest_face(p)[1].embeddings[0] for _, p in probes]), k=3)
    correct = sum(r[0].identity_id == identity for (identity, _), r in zip(probes, results))
    assert correct / len(probes) >= 0.95, f"top-1 {correct}/{len(probes)}"
    matched = sum(r[0].identity_id == identity and r[0].decision == "match" for (identity, _), r in zip(probes, results))
    assert matched / len(probes) >= 0.9


def test_people_not_enrolled_come_back_unknown(enrolled: Gallery, largest_face, identity_photos: dict[str, list[str]],  # type: ignore[no-untyped-def]
                                               labels: list[dict[str, str]]) -> None:
    strangers = [p for identity in NOT_ENROLLED for p in identity_photos[identity]]
    strangers += [r["path"] for r in labels if r["path"].startswith("fairface/")]
    assert len(strangers) >= 60
    results = enrolled.search(np.stack([largest_face(p)[1].embeddings[0] for p in strangers]), k=1)
    false_matches = [(p, r[0].identity_id, round(r[0].score, 3)) for p, r in zip(strangers, results) if r[0].decision == "match"]
    assert false_matches == []


def test_enrolment_refusals(enrolled: Gallery, detector, multitask, faces_dir: Path) -> None:  # type: ignore[no-untyped-def]
    enroller = PhotoEnroller(enrolled, FaceAnalyzer(detector, multitask), EnrolPolicy(min_quality=0.5))
    group = faces_dir / "dlib/examples/faces/2008_002470.jpg"
    dogs = faces_dir / "dlib/examples/faces/dogs.jpg"
    tiny = faces_dir / "face_recognition/examples/obama_small.jpg"
    outcomes = enroller.enrol("newcomer", [
        ("group.jpg", group.read_bytes()),
        ("dogs.jpg", dogs.read_bytes()),
        ("broken.jpg", b"\xff\xd8\xff not an image"),
    ])
    assert [o.status for o in outcomes] == ["refused"] * 3
    assert "6 faces found where one was expected (use --largest-face" in outcomes[0].reason
    assert "no face found" in outcomes[1].reason
    assert "not a decodable image" in outcomes[2].reason
    assert "newcomer" not in {i.id for i in enrolled.identities()}  # nothing accepted: no identity created
    strict = PhotoEnroller(enrolled, FaceAnalyzer(detector, multitask), EnrolPolicy(min_quality=0.99))
    refused = strict.enrol("newcomer", [("small.jpg", tiny.read_bytes())])[0]
    assert refused.status == "refused" and "below the minimum 0.99" in refused.reason
    largest = PhotoEnroller(enrolled, FaceAnalyzer(detector, multitask), EnrolPolicy(largest_face=True, min_quality=0.0))
    assert largest.enrol("newcomer", [("group.jpg", group.read_bytes())])[0].status == "enrolled"
    assert largest.enrol("newcomer", [("group.jpg", group.read_bytes())])[0].status == "duplicate"
    enrolled.remove("newcomer")


def test_the_same_photo_re_encoded_is_refused_for_another_identity(tmp_path: Path, detector, multitask,  # type: ignore[no-untyped-def]
                                                                    faces_dir: Path) -> None:
    """Byte-level duplicate checks miss a photo saved again: its embedding does not."""
    import io

    import cv2
    from PIL import Image

    photo = faces_dir / "face_recognition/examples/lin-manuel-miranda.png"
    rgb = Image.open(photo).convert("RGB")
    copies = {}
    for name, fmt, image in (("cmyk.jpg", "JPEG", rgb.convert("CMYK")), ("copy.tif", "TIFF", rgb)):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        copies[name] = buffer.getvalue()
    copies["deep.png"] = cv2.imencode(".png", (np.asarray(rgb)[..., ::-1].astype(np.uint16) * 257))[1].tobytes()
    with Gallery(tmp_path / "g.db") as gallery:
        enroller = PhotoEnroller(gallery, FaceAnalyzer(detector, multitask), EnrolPolicy(min_quality=0.0))
        assert enroller.enrol("lin", [("lin.png", photo.read_bytes())])[0].status == "enrolled"
        for n, (name, data) in enumerate(copies.items()):
            [outcome] = enroller.enrol(f"someone-{n}", [(name, data)])
            assert outcome.status == "refused", name
            assert "near-identical copy" in (outcome.reason or "") and "identity 'lin'" in (outcome.reason or "")
        assert [i.id for i in gallery.identities()] == ["lin"]
