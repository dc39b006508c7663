"""The worker's output messages: typed, versioned, with deterministic event ids.

- :class:`FrameResult` (topic ``faces.detections``): every processed frame, with its faces.
- :class:`TrackEvent` (topic ``faces.tracks``): ``track_started``, ``track_identified``
  (first identification and every change) and ``track_ended`` (with a summary).

Event ids are built from the stream, frame index and track id only, so reprocessing the
same input gives the same ids and consumers can drop duplicates after a crash. JSON
Schema files for both live in ``stream_worker/messages/schemas/``; :func:`schema_for` loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

FRAME_SCHEMA = "facestream.frame/1"
TRACK_SCHEMA = "facestream.track/1"
RETRACTION_SCHEMA = "facestream.retraction/1"
"""An erased identity: the event ids, on one stream, of messages that carried it."""
SCHEMA_DIR = Path(__file__).with_name("schemas")


@cache
def schema_for(schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a message schema id."""
    name = schema_id.replace("facestream.", "").replace("/", ".v") + ".schema.json"
    return dict(json.loads((SCHEMA_DIR / name).read_text()))


@dataclass(frozen=True)
class IdentityRef:
    identity_id: str
    name: str
    score: float
    decision: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.identity_id, "name": self.name, "score": round(self.score, 4), "decision": self.decision}


@dataclass(frozen=True)
class StreamGap:
    """Frames a live source lost (a dropped connection, frames dropped to keep up)."""

    frames_lost: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"frames_lost": self.frames_lost, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class FrameResult:
    stream_id: str
    frame_index: int
    pts_ms: float | None
    received_utc: str
    width: int
    height: int
    faces: tuple[dict[str, Any], ...]
    """Per face: box, score, landmarks, track_id, quality, pose, age, age_std, gender,
    gender_score, identity (or null)."""
    gap: StreamGap | None = None

    @property
    def event_id(self) -> str:
        return f"{self.stream_id}:{self.frame_index}"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "schema": FRAME_SCHEMA,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "frame_index": self.frame_index,
            "pts_ms": None if self.pts_ms is None else round(self.pts_ms, 3),
            "received_utc": self.received_utc,
            "width": self.width,
            "height": self.height,
            "faces": list(self.faces),
        }
        if self.gap is not None:
            record["gap"] = self.gap.to_json()
        return record


@dataclass(frozen=True)
class TrackEvent:
    type: str
    """``track_started``, ``track_identified`` or ``track_ended``."""
    stream_id: str
    track_id: int
    frame_index: int
    pts_ms: float | None
    identity: IdentityRef | None = None
    previous_identity: IdentityRef | None = None
    summary: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        base = f"{self.stream_id}:track:{self.track_id}"
        if self.type == "track_identified":
            return f"{base}:identified:{self.frame_index}"
        return f"{base}:{self.type.removeprefix('track_')}"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "schema": TRACK_SCHEMA,
            "event_id": self.event_id,
            "type": self.type,
            "stream_id": self.stream_id,
            "track_id": self.track_id,
            "frame_index": self.frame_index,
            "pts_ms": None if self.pts_ms is None else round(self.pts_ms, 3),
        }
        if self.identity is not None:
            record["identity"] = self.identity.to_json()
        if self.type == "track_identified":
            record["previous_identity"] = None if self.previous_identity is None else self.previous_identity.to_json()
        if self.summary is not None:
            record["summary"] = self.summary
        return record
