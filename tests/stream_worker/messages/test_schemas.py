"""The JSON Schema files are generated from the message models, and say what the models say."""

from __future__ import annotations

import jsonschema
import pytest

from stream_worker.messages.generate import SCHEMAS, render
from stream_worker.messages.results import (
    SCHEMA_DIR,
    FaceRecord,
    FaceTraits,
    FrameResult,
    IdentityRef,
    StreamGap,
    TrackIdentified,
    TrackStarted,
    schema_for,
)


@pytest.mark.parametrize("stem", sorted(SCHEMAS))
def test_each_committed_schema_is_the_generated_one(stem: str) -> None:
    committed = (SCHEMA_DIR / f"{stem}.schema.json").read_text()
    assert committed == render(stem), f"{stem}: run `python -m stream_worker.messages.generate`"


def frame() -> FrameResult:
    import numpy as np

    traits = FaceTraits.estimate(31.24, 4.26, 0.8, np.array([3.21, float("nan"), -1.0]), 0.91234)
    face = FaceRecord(box=(1.0, 2.0, 30.0, 40.0), score=0.99, landmarks=((1.0, 2.0),) * 5, track_id=3,
                      identity=IdentityRef(identity_id="lin", name="Lin", score=0.951234, decision="match"),
                      **traits.model_dump())
    return FrameResult(stream_id="cam", frame_index=4, pts_ms=133.4666, received_utc="2026-11-29T10:00:00.000+00:00",
                       width=640, height=360, faces=(face,), gap=StreamGap(frames_lost=2, seconds=0.0667))


def test_messages_validate_against_their_schemas_and_broken_ones_do_not() -> None:
    message = frame().to_json()
    assert message["event_id"] == "cam:4" and message["pts_ms"] == 133.467
    assert message["faces"][0]["identity"] == {"id": "lin", "name": "Lin", "score": 0.9512, "decision": "match"}
    assert message["faces"][0]["pose"] == {"yaw": 3.2, "pitch": None, "roll": -1.0}
    jsonschema.validate(message, schema_for("facestream.frame/2"))
    for broken in ({k: v for k, v in message.items() if k != "event_id"}, {**message, "extra": 1},
                   {**message, "faces": [{**message["faces"][0], "gender": "other"}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema_for("facestream.frame/2"))
    started = TrackStarted(stream_id="cam", track_id=3, frame_index=4, pts_ms=None).to_json()
    assert "identity" not in started and started["event_id"] == "cam:track:3:started"
    identified = TrackIdentified(stream_id="cam", track_id=3, frame_index=9, pts_ms=300.0, previous_identity=None,
                                 identity=IdentityRef(identity_id="lin", name="Lin", score=0.95, decision="match"))
    jsonschema.validate(identified.to_json(), schema_for("facestream.track/3"))
    assert identified.event_id == "cam:track:3:identified:9"
    without = {k: v for k, v in identified.to_json().items() if k != "previous_identity"}
    with pytest.raises(jsonschema.ValidationError):  # an identification always says from whom
        jsonschema.validate(without, schema_for("facestream.track/3"))


def test_a_message_survives_its_own_json() -> None:
    message = frame()
    assert FrameResult.model_validate_json(message.encode()) == message
