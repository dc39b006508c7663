"""Tracker scenarios on hand-built faces: appear, persist, occlude, reappear, expire."""

from __future__ import annotations

import numpy as np
import pytest

from engines.errors import ConfigError
from stream_worker.pipeline.tracker import FaceTracker, TrackerConfig


def face(x: float, y: float, side: float = 60.0) -> list[float]:
    return [x, y, x + side, y + side]


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128)
    return v / np.linalg.norm(v)


ALICE, BOB = unit(1), unit(2)


def step(tracker: FaceTracker, frame: int, *faces: tuple[list[float], np.ndarray]):  # type: ignore[no-untyped-def]
    boxes = np.array([f[0] for f in faces], float).reshape(-1, 4)
    embeddings = np.array([f[1] for f in faces]) if faces and all(f[1] is not None for f in faces) else None
    return tracker.update(frame, boxes, embeddings)


def test_a_face_is_confirmed_after_min_hits_and_keeps_its_id() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=3))
    updates = [step(tracker, i, (face(100 + 3 * i, 50), ALICE)) for i in range(10)]
    assert [u.track_ids for u in updates[:3]] == [[None], [None], [1]]
    assert updates[2].started == [1]
    assert all(u.track_ids == [1] for u in updates[2:])


def test_short_occlusion_keeps_the_id_and_long_absence_ends_the_track() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=2, max_missed_frames=10))
    for i in range(5):
        step(tracker, i, (face(100 + 4 * i, 50), ALICE))
    for i in range(5, 12):  # hidden for 7 frames while moving on
        assert step(tracker, i).ended == []
    back = step(tracker, 12, (face(100 + 4 * 12, 50), ALICE))
    assert back.track_ids == [1]  # same person, near the predicted place: same track
    ended = [step(tracker, i).ended for i in range(13, 30)]
    assert [1] in ended  # gone for longer than max_missed_frames


def test_a_different_person_in_the_same_place_gets_a_new_track() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    assert step(tracker, 0, (face(100, 50), ALICE)).track_ids == [1]
    swapped = step(tracker, 1, (face(101, 50), BOB))
    assert swapped.track_ids == [2]


def test_two_faces_crossing_keep_their_ids() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    ids = []
    for i in range(20):
        left_to_right = (face(50 + 15 * i, 80), ALICE)
        right_to_left = (face(335 - 15 * i, 80), BOB)
        ids.append(step(tracker, i, left_to_right, right_to_left).track_ids)
    assert all(pair == [1, 2] for pair in ids)


def test_a_tentative_track_that_vanishes_never_gets_an_id() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=3))
    step(tracker, 0, (face(10, 10), ALICE))
    step(tracker, 1, (face(11, 10), ALICE))
    for i in range(2, 6):
        assert step(tracker, i).ended == []  # never confirmed: nothing to end
    assert step(tracker, 6, (face(300, 10), BOB)).track_ids == [None]
    assert tracker.active_ids == []


def test_frame_skips_are_predicted() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    for i in range(4):
        step(tracker, 2 * i, (face(100 + 10 * i, 50), None))  # every other frame, 5 px per frame
    predicted = tracker.predicted_boxes(10)
    (box,) = predicted.values()
    assert box[0] == pytest.approx(150, abs=5)


def test_trackers_have_their_own_ids_and_reset() -> None:
    one, two = FaceTracker(TrackerConfig(min_hits=1)), FaceTracker(TrackerConfig(min_hits=1))
    step(one, 0, (face(0, 0), ALICE))
    step(one, 0 + 1, (face(200, 0), BOB), (face(0, 0), ALICE))
    assert step(two, 0, (face(0, 0), ALICE)).track_ids == [1]  # no shared counter
    assert sorted(one.reset()) == [1, 2] and one.active_ids == []
    assert step(one, 0, (face(0, 0), ALICE)).track_ids == [1]


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="min_hits: Input should be greater than or equal to 1"):
        TrackerConfig(min_hits=0)


def test_a_face_found_only_by_full_detections_becomes_a_track() -> None:
    """Refinement loses the face every time (empty refine frames); the full detection every
    5th frame finds it. Its full-detection hits alone confirm it."""
    tracker = FaceTracker(TrackerConfig(min_hits=3))
    ids = []
    for i in range(16):
        if i % 5 == 0:
            ids.append(step(tracker, i, (face(100 + i, 50), ALICE)).track_ids)
        else:
            tracker.update(i, np.zeros((0, 4)), None, full=False)
            assert tracker.has_unconfirmed == (ids[-1] == [None])
    assert ids == [[None], [None], [1], [1]]


def test_an_unconfirmed_face_missed_by_two_full_detections_is_dropped() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=3))
    step(tracker, 0, (face(100, 50), ALICE))
    assert tracker.has_unconfirmed
    step(tracker, 1)
    assert tracker.has_unconfirmed  # one miss: still waiting
    step(tracker, 2)
    assert not tracker.has_unconfirmed and tracker.predicted_boxes(3) == {}
