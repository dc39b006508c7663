"""Identity per track, decided by votes: scenarios narrated search by search."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.gallery import Match
from stream_worker.config import IdentifyConfig
from stream_worker.pipeline.track_state import TrackState


def track(**config: float) -> TrackState:
    return TrackState("cam", 1, 0, 0.0, IdentifyConfig(**config))  # type: ignore[arg-type]


def match(identity: str, score: float, decision: str = "match") -> Match:
    return Match(identity, identity.title(), score, decision)


def test_the_first_match_names_the_track_and_unknowns_do_not_vote() -> None:
    t = track()
    assert t.add_search(match("ann", 0.94, "unknown"), 0.9) is None and t.identity is None
    assert t.add_search(None, 0.9) is None and t.identity is None
    named = t.add_search(match("ann", 0.95), 0.8)
    assert named is not None and named.identity_id == "ann" and t.identity == named


def test_the_identity_switches_only_when_anothers_votes_outweigh_it_by_the_ratio() -> None:
    t = track(switch_ratio=1.5)  # a vote weighs quality x score
    assert t.add_search(match("ann", 0.95), 0.8) is not None  # ann 0.760: named
    assert t.add_search(match("bob", 0.96), 0.8) is None  # bob 0.768 leads, but < 1.5 x 0.760 = 1.140
    assert t.identity is not None and t.identity.identity_id == "ann"
    switched = t.add_search(match("bob", 0.96), 0.4)  # bob 1.152 >= 1.140: switch
    assert switched is not None and switched.identity_id == "bob" and t.identity == switched
    assert t.add_search(match("ann", 0.95), 0.5) is None  # ann 1.235 leads, < 1.5 x 1.152 = 1.728
    assert t.add_search(match("ann", 0.95), 0.5) is None  # ann 1.710 < 1.728: still bob
    assert t.identity.identity_id == "bob"
    switched = t.add_search(match("ann", 0.95), 0.1)  # ann 1.805 >= 1.728: back to ann
    assert switched is not None and switched.identity_id == "ann"


def test_a_switch_is_reported_once_with_the_best_score_of_the_new_identity() -> None:
    t = track(switch_ratio=1.0)
    t.add_search(match("ann", 0.93), 0.5)
    changed = t.add_search(match("bob", 0.97), 0.6)
    assert changed is not None and (changed.identity_id, changed.score) == ("bob", 0.97)
    assert t.add_search(match("bob", 0.95), 0.6) is None  # the same decision is no event


def test_erasing_the_named_identity_unnames_the_track_and_asks_for_a_new_search() -> None:
    t = track()
    t.observe(3, 100.0, np.array([0, 0, 10, 10]), 0.8, 30.0, 0.9, np.ones(128) / np.sqrt(128))
    t.add_search(match("ann", 0.95), 0.8)
    assert not t.wants_search()
    assert t.forget_identity("ann") and t.identity is None and t.wants_search()
    assert not t.forget_identity("nobody")


@pytest.mark.parametrize("ratio", [0.5, float("nan")])
def test_the_switch_ratio_is_checked(ratio: float) -> None:
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match="switch_ratio"):
        IdentifyConfig(switch_ratio=ratio)


def unit_vector(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def test_a_track_keeps_its_best_shot_and_up_to_four_diverse_others_through_a_checkpoint() -> None:
    from datetime import UTC, datetime, timedelta

    t = track(min_quality=0.2)
    start = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    box = np.array([0, 0, 10, 10], np.float32)
    # five views: three nearly the same (a), two others (b, c); and a poor face that is never kept
    views = [(0.5, unit_vector(1, 0, 0)), (0.6, unit_vector(1, 0.01, 0)), (0.55, unit_vector(1, 0, 0.01)),
             (0.4, unit_vector(0, 1, 0)), (0.3, unit_vector(0, 0, 1)), (0.1, unit_vector(1, 1, 1)),
             (0.45, unit_vector(1, 0.02, 0.01))]
    for i, (quality, v) in enumerate(views):
        t.observe(i, i * 40.0, box, quality, 30.0, 0.9, v, received=start + timedelta(seconds=i))
    qualities, vectors = t.embeddings
    assert qualities[0] == 0.6  # the best shot first
    assert len(vectors) == 5 and 0.1 not in qualities  # a face below min_quality is never kept
    # the near-copies of the best shot went first: b and c are kept
    assert any(np.allclose(v, unit_vector(0, 1, 0)) for v in vectors)
    assert any(np.allclose(v, unit_vector(0, 0, 1)) for v in vectors)
    assert t.first_utc == start and t.last_utc == start + timedelta(seconds=6)
    restored = TrackState.from_state(t.to_state(), t.config)
    np.testing.assert_array_equal(restored.embeddings[1], vectors)
    assert restored.first_utc == start and restored.last_utc == t.last_utc
    summary = restored.summary(None)
    assert summary.first_utc == "2026-11-29T10:00:00.000+00:00" and "embedding" not in summary.to_json()


def test_attributes_and_expression_are_smoothed_by_quality_through_a_checkpoint() -> None:
    t = track()
    box = np.array([0, 0, 10, 10], np.float32)
    t.observe(0, 0.0, box, 0.9, 30.0, 0.9, unit_vector(1, 0, 0), attributes={"Smiling": 1.0, "Eyeglasses": 0.2},
              expression={"happy": 0.8, "neutral": 0.2})
    t.observe(1, 40.0, box, 0.1, 30.0, 0.9, unit_vector(1, 0, 0), attributes={"Smiling": 0.0, "Eyeglasses": 0.7},
              expression={"happy": 0.0, "neutral": 1.0})
    assert t.attributes == pytest.approx({"Smiling": 0.9, "Eyeglasses": 0.25})
    assert t.expression == pytest.approx({"happy": 0.72, "neutral": 0.28})
    restored = TrackState.from_state(t.to_state(), t.config)
    assert restored.attributes == pytest.approx(t.attributes)
    summary = restored.summary(None).to_json()
    assert summary["attributes"] == {"Smiling": 0.9, "Eyeglasses": 0.25}
    assert summary["expression"] == {"value": "happy", "probability": 0.72}
    plain = track()
    plain.observe(0, 0.0, box, 0.9, 30.0, 0.9, unit_vector(1, 0, 0))  # the Cydral models: no attributes
    assert "attributes" not in plain.summary(None).to_json() and "expression" not in plain.summary(None).to_json()
