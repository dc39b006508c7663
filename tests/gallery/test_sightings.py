"""The sightings store: day partitions, idempotent adds, search by face, retention, erasure, audit.

Sightings carry real embeddings of the shared photos (the default recognizer), so search is
checked on real faces: another photo of the same person finds their sighting, a stranger's
finds nothing above the calibrated threshold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gallery.defaults import DEFAULT_CALIBRATIONS
from gallery.sightings import Sighting, SightingsError, SightingsStore

DAY0 = datetime(2026, 11, 20, 23, 59, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def people(identity_photos: dict[str, list[str]], largest_face, multitask):  # type: ignore[no-untyped-def]
    """Three people with at least two photos: (first photo's embedding, second photo's)."""
    out = {}
    for identity, photos in sorted(identity_photos.items()):
        if len(photos) >= 2 and len(out) < 3:
            out[identity] = tuple(largest_face(p)[1].embeddings[0] for p in photos[:2])
    assert len(out) == 3
    return out


def sighting(n: int, vector: np.ndarray, start: datetime, *, stream: str = "cam-1", identity: str | None = None,
             space: str | None = None, minutes: float = 1.0) -> Sighting:
    from engines.config import DEFAULT_RECOGNIZER
    from engines.multitask.recognizers import profile

    return Sighting(
        sighting_id=f"{stream}:track:{n}:ended", stream_id=stream, track_id=n, first_frame=10 * n,
        last_frame=10 * n + 9, first_pts_ms=0.0, last_pts_ms=9000.0, start_utc=start,
        end_utc=start + timedelta(minutes=minutes), frames=10, quality=0.8,
        space_id=space or profile(DEFAULT_RECOGNIZER).model_id, vectors=np.asarray([vector]),
        identity_id=identity, identity_name=identity, identity_score=0.9 if identity else None, thumbnail=b"\xff\xd8jpeg")


def space() -> str:
    from engines.config import DEFAULT_RECOGNIZER
    from engines.multitask.recognizers import profile

    return profile(DEFAULT_RECOGNIZER).model_id


def threshold() -> float:
    return DEFAULT_CALIBRATIONS[space()].threshold


def test_adding_is_idempotent_and_each_day_is_a_partition(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a, _), (b, _), _ = people.values()
    with SightingsStore(tmp_path / "s") as store:
        assert store.add(sighting(1, a, DAY0))
        assert not store.add(sighting(1, a, DAY0))  # a redelivered track_ended event
        assert not store.add(sighting(1, b, DAY0 + timedelta(days=3)))  # same id, whatever else it says
        assert store.add(sighting(2, b, DAY0 + timedelta(minutes=2)))  # starts the next day (UTC)
        assert store.count() == 2
        assert [d.isoformat() for d in store.days()] == ["2026-11-20", "2026-11-21"]
    with SightingsStore(tmp_path / "s", create=False) as again:  # durable
        found = again.get("cam-1:track:1:ended")
        assert found is not None and found.thumbnail == b"\xff\xd8jpeg" and found.start_utc == DAY0
        np.testing.assert_allclose(found.vectors[0], a / np.linalg.norm(a), atol=1e-6)


def test_search_finds_the_person_and_not_a_stranger(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a1, a2), (b1, b2), (c1, _) = people.values()
    with SightingsStore(tmp_path / "s") as store:
        store.add(sighting(1, a1, DAY0))
        store.add(sighting(2, b1, DAY0 + timedelta(hours=1), stream="cam-2"))
        hits = store.search(a2, space(), threshold=threshold())
        assert hits[0].sighting.sighting_id == "cam-1:track:1:ended" and hits[0].decision == "match"
        assert all(h.decision == "unknown" for h in hits[1:])
        hits = store.search(b2, space(), threshold=threshold())
        assert hits[0].sighting.stream_id == "cam-2" and hits[0].decision == "match"
        assert not [h for h in store.search(c1, space(), threshold=threshold()) if h.decision == "match"]
        # filters: camera and time
        assert store.search(a2, space(), threshold=threshold(), cameras=["cam-2"])[0].sighting.stream_id == "cam-2"
        late = store.search(a2, space(), threshold=threshold(), since=DAY0 + timedelta(minutes=30))
        assert [h.sighting.track_id for h in late] == [2]
        # another embedding space is never compared
        assert store.search(a2, "other-space", threshold=threshold()) == []
        with pytest.raises(SightingsError, match="time zone"):
            store.search(a2, space(), threshold=threshold(), since=datetime(2026, 11, 20))


def test_a_time_filter_opens_only_the_days_it_needs(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a1, a2), _, _ = people.values()
    with SightingsStore(tmp_path / "s") as store:
        for day in range(5):
            store.add(sighting(day + 1, a1, DAY0 + timedelta(days=day)))
    with SightingsStore(tmp_path / "s", create=False) as store:
        since = DAY0 + timedelta(days=3, seconds=30)  # 2026-11-23 23:59:30: during sighting 4 (23:59-00:00)
        hits = store.search(a2, space(), threshold=threshold(), since=since)
        assert {h.sighting.track_id for h in hits} == {4, 5}
        assert sorted(store._partitions) == store.days()[2:]  # the day before `since` may hold a late end
        until = DAY0 + timedelta(days=1, minutes=30)
        assert {h.sighting.track_id for h in store.search(a2, space(), threshold=threshold(), until=until)} == {1, 2}


def test_visits_group_consecutive_sightings_per_camera(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a1, a2), _, _ = people.values()
    with SightingsStore(tmp_path / "s", visit_gap_s=60) as store:
        store.add(sighting(1, a1, DAY0))
        store.add(sighting(2, a1, DAY0 + timedelta(minutes=1, seconds=30)))  # 30 s after the first ends
        store.add(sighting(3, a1, DAY0 + timedelta(hours=2)))
        store.add(sighting(4, a1, DAY0 + timedelta(minutes=1), stream="cam-2"))
        visits = store.visits(store.search(a2, space(), threshold=threshold()))
        spans = sorted((v.stream_id, [h.sighting.track_id for h in v.hits]) for v in visits)
        assert spans == [("cam-1", [1, 2]), ("cam-1", [3]), ("cam-2", [4])]


def test_retention_deletes_whole_days_and_counts_them(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a1, a2), _, _ = people.values()
    with SightingsStore(tmp_path / "s") as store:
        for day in range(4):
            store.add(sighting(day + 1, a1, DAY0 + timedelta(days=day)))
        now = DAY0 + timedelta(days=3)
        removed = store.expire(keep_days=2, now=now)
        assert [d.isoformat() for d in removed] == ["2026-11-20"]
        assert not (tmp_path / "s/days/2026-11-20.sqlite").exists()
        assert {h.sighting.track_id for h in store.search(a2, space(), threshold=threshold())} == {2, 3, 4}
        assert store.counter("partitions_expired") == 1
        with pytest.raises(SightingsError, match="at least 1 day"):
            store.expire(keep_days=0)


def test_erasure_leaves_no_vector_of_the_person(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    (a1, a2), (b1, _), _ = people.values()
    with SightingsStore(tmp_path / "s") as store:
        store.add(sighting(1, a1, DAY0, identity="person-a"))
        store.add(sighting(2, a1, DAY0 + timedelta(days=1), identity="person-a"))
        store.add(sighting(3, b1, DAY0))
        assert store.erase_identity("person-a") == 2
        for probe in (a1, a2):  # searched with their own embedding: nothing of them is left
            assert [h.sighting.track_id for h in store.search(probe, space(), threshold=-1.0)] == [3]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "s/days").iterdir())
    assert (a1 / np.linalg.norm(a1)).astype(np.float32).tobytes()[:64] not in raw  # overwritten, not just unlinked


def test_the_audit_log_keeps_a_hash_never_the_photo(tmp_path: Path) -> None:
    photo = b"\x89PNG a photo of a missing person"
    with SightingsStore(tmp_path / "s") as store:
        store.audit("investigator-7", "search", 3, photo, detail="{}")
        (entry,) = store.audit_log()
    assert entry["operator"] == "investigator-7" and entry["results"] == 3
    assert entry["query_sha256"] == __import__("hashlib").sha256(photo).hexdigest()
    assert photo not in (tmp_path / "s/store.sqlite").read_bytes()


@pytest.mark.parametrize("change, message", [
    ({"sighting_id": "../../etc"}, "sighting_id"),
    ({"stream_id": ""}, "stream_id"),
    ({"start_utc": datetime(2026, 1, 1)}, "time zone"),
    ({"vectors": np.zeros((6, 128), np.float32) + 1}, "1 to 5"),
    ({"vectors": np.full((1, 128), np.nan, np.float32)}, "finite"),
    ({"thumbnail": b"x" * ((1 << 20) + 1)}, "thumbnail"),
])
def test_bad_sightings_are_refused_clearly(change: dict, message: str) -> None:  # type: ignore[type-arg]
    base = dict(sighting_id="s1", stream_id="cam", track_id=1, first_frame=0, last_frame=1, first_pts_ms=0.0,
                last_pts_ms=1.0, start_utc=DAY0, end_utc=DAY0, frames=2, quality=0.5, space_id="x",
                vectors=np.ones((1, 128), np.float32))
    with pytest.raises(SightingsError, match=message):
        Sighting(**{**base, **change})


def test_a_file_in_place_of_the_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("not a folder")
    with pytest.raises(SightingsError, match="is a file"):
        SightingsStore(tmp_path / "f")
    with pytest.raises(SightingsError, match="no sightings store"):
        SightingsStore(tmp_path / "missing", create=False)
