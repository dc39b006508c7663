"""SFace's centred space: the shipped centre, the network's embeddings, and the exact
upgrade of the raw space FaceStream shipped before (gallery templates, sightings)."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from engines.config import Recognizer
from engines.errors import WeightFormatError
from engines.multitask import centre as centre_module
from engines.multitask.centre import SHIPPED_CENTRE, IdentityCentre, shipped_centre
from engines.multitask.recognizers import (
    RAW_FUSED_SPACE,
    RAW_FUSED_WEIGHT,
    RAW_SFACE_SPACE,
    SFACE_CENTRE_SHA256,
    fuse,
    profile,
    upgrade_space,
)
from gallery.gallery import Gallery
from gallery.sightings import Sighting, SightingsStore

DAY0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def raw_from_centred(centred: np.ndarray) -> np.ndarray:
    """The raw unit embedding u with unit(u - mean) = centred: u = mean + t * centred, t > 0
    with |u| = 1 (one root, the mean lying inside the unit ball)."""
    mean = shipped_centre(SFACE_CENTRE_SHA256).astype(np.float64)
    c = centred.astype(np.float64)
    b = c @ mean
    t = -b + np.sqrt(b**2 + 1.0 - mean @ mean)
    return (mean[None] + t[:, None] * c).astype(np.float32)


@pytest.fixture(scope="module")
def faces(identity_photos: dict[str, list[str]], largest_face) -> tuple[np.ndarray, list[str]]:  # type: ignore[no-untyped-def]
    """The default network's embeddings of one photo per person, and the people."""
    people = sorted(p for p, photos in identity_photos.items() if photos)
    vectors = np.stack([largest_face(identity_photos[p][0])[1].embeddings[0] for p in people])
    return vectors.astype(np.float32), people


def test_the_shipped_centre_is_checked_and_named_by_the_space(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mean = shipped_centre(SFACE_CENTRE_SHA256)
    assert mean.shape == (128,) and 0.15 < np.linalg.norm(mean) < 0.4
    assert SFACE_CENTRE_SHA256[:8] in profile(Recognizer.SFACE).model_id
    assert SFACE_CENTRE_SHA256[:8] in profile(Recognizer.FUSED).model_id
    info = json.loads(SHIPPED_CENTRE.read_text())
    assert info["trunk"] == "sface-v2" and info["split"] == "train" and info["faces"] > 10_000

    tampered = tmp_path / "sface-centre.json"
    tampered.write_text(SHIPPED_CENTRE.read_text().replace("0.0", "0.1", 1))
    monkeypatch.setattr(centre_module, "SHIPPED_CENTRE", tampered)
    shipped_centre.cache_clear()
    try:
        with pytest.raises(WeightFormatError, match="sha256"):
            shipped_centre(SFACE_CENTRE_SHA256)
    finally:
        shipped_centre.cache_clear()


@pytest.mark.parametrize("change, message", [
    ({"mean": []}, "non-empty"),
    ({"mean": [0.9] * 128}, "unit ball"),
    ({"mean": None}, "not an identity centre"),
    ({"faces": "many"}, "not an identity centre"),
])
def test_a_bad_centre_file_is_refused(change: dict, message: str) -> None:  # type: ignore[type-arg]
    raw = {**json.loads(SHIPPED_CENTRE.read_text()), **change}
    with pytest.raises(WeightFormatError, match=message):
        IdentityCentre.from_json(json.dumps(raw))


def test_the_network_embeds_in_the_centred_space(faces) -> None:  # type: ignore[no-untyped-def]
    """Different people's embeddings share less than the raw ones did: their mean shrinks
    (to what 20 independent directions average to) and so does their average cosine."""
    centred, people = faces
    raw = raw_from_centred(centred)
    assert len(people) >= 15
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(centred.mean(0)) < np.linalg.norm(raw.mean(0)) - 0.1
    off = ~np.eye(len(people), dtype=bool)
    assert (centred @ centred.T)[off].mean() < (raw @ raw.T)[off].mean() - 0.05


def test_the_retired_spaces_map_exactly_into_the_new_ones(faces) -> None:  # type: ignore[no-untyped-def]
    centred, _ = faces
    space, back = upgrade_space(RAW_SFACE_SPACE, raw_from_centred(centred))
    assert space == profile(Recognizer.SFACE).model_id
    np.testing.assert_allclose(back, centred, atol=1e-5)

    dlib = np.random.default_rng(0).normal(size=(len(centred), 128)).astype(np.float32)
    dlib /= np.linalg.norm(dlib, axis=1, keepdims=True)
    space, fused = upgrade_space(RAW_FUSED_SPACE, fuse(dlib, raw_from_centred(centred), RAW_FUSED_WEIGHT))
    assert space == profile(Recognizer.FUSED).model_id
    np.testing.assert_allclose(fused, fuse(dlib, centred, profile(Recognizer.FUSED).fusion_weight), atol=1e-5)
    assert upgrade_space("dlib-resnet-v1@55533b28", dlib)[1] is dlib  # a current space is left alone
    with pytest.raises(ValueError, match="128 dimensions"):
        upgrade_space(RAW_SFACE_SPACE, np.zeros((2, 64), np.float32))


def test_a_sightings_store_of_the_raw_space_is_upgraded_when_opened(tmp_path: Path, faces) -> None:  # type: ignore[no-untyped-def]
    """A partition written before the centre (raw space id and vectors) is moved into the
    centred space, exactly, in place; a track of the raw space still in flight is too."""
    centred, people = faces
    current = profile(Recognizer.SFACE).model_id

    def sighting(n: int, vector: np.ndarray, space: str) -> Sighting:
        return Sighting(sighting_id=f"cam:{n}", stream_id="cam", track_id=n, first_frame=n, last_frame=n,
                        first_pts_ms=None, last_pts_ms=None, start_utc=DAY0, end_utc=DAY0 + timedelta(seconds=1),
                        frames=1, quality=0.8, space_id=space, vectors=vector[None])

    with SightingsStore(tmp_path / "s") as store:
        for n in range(3):
            store.add(sighting(n, centred[n], current))
    raw = raw_from_centred(centred[:3])
    day_file = tmp_path / "s" / "days" / f"{DAY0.date().isoformat()}.sqlite"
    with sqlite3.connect(day_file) as db:  # as the code before the centre wrote it
        db.execute("UPDATE sightings SET space_id = ?", (RAW_SFACE_SPACE,))
        for n in range(3):
            db.execute("UPDATE vectors SET vector = ? WHERE sighting_id = ?", (raw[n].tobytes(), f"cam:{n}"))
    with SightingsStore(tmp_path / "s", create=False) as store:
        for n in range(3):
            found = store.get(f"cam:{n}")
            assert found is not None and found.space_id == current
            np.testing.assert_allclose(found.vectors[0], centred[n], atol=1e-5)
        hits = store.search(centred[1], current, threshold=0.5)
        assert hits[0].sighting.sighting_id == "cam:1" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        in_flight = sighting(7, raw_from_centred(centred[3:4])[0], RAW_SFACE_SPACE)
        assert in_flight.space_id == current
        np.testing.assert_allclose(in_flight.vectors[0], centred[3], atol=1e-5)


def test_a_gallery_of_the_raw_space_converts_its_templates_without_chips(tmp_path: Path, faces,  # type: ignore[no-untyped-def]
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Opening a gallery of the raw space says how to move it; templates enrolled as vectors
    (no chip) there become searchable in the centred space by `gallery reembed`, scoring as
    templates enrolled there directly; a second run adds nothing."""
    centred, people = faces
    old = Gallery(tmp_path / "g.db", model=RAW_SFACE_SPACE, dim=128)
    for person, vector in zip(people, raw_from_centred(centred)):
        old.enrol(person, vector[None])
    old.close()
    space = profile(Recognizer.SFACE)
    with caplog.at_level(logging.WARNING, logger="gallery.gallery"):
        moved = Gallery(tmp_path / "g.db", model=space.model_id, dim=space.dim)
    assert "gallery reembed --model sface-2021dec" in caplog.text
    assert moved.stats()["searchable_templates"] == 0

    def no_chips(chip):  # type: ignore[no-untyped-def]
        raise AssertionError("there are no chips to embed")

    assert moved.reembed(no_chips)["converted"] == len(people)
    assert moved.reembed(no_chips)["converted"] == 0
    for person, vector, match in zip(people, centred, moved.search(centred, k=1)):
        assert match[0].identity_id == person and match[0].score == pytest.approx(1.0, abs=1e-4)
    moved.close()
