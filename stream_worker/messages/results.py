"""The worker's output messages: typed, versioned, with deterministic event ids.

- :class:`FrameResult` (topic ``faces.detections``): every processed frame, with one
  :class:`FaceRecord` per face.
- Track events (topic ``faces.tracks``): :class:`TrackStarted`, :class:`TrackIdentified`
  (first identification and every change) and :class:`TrackEnded` (with a
  :class:`TrackSummary`); :data:`TrackEvent` is their union, told apart by ``type``.
- :class:`Retraction`: an erased identity's event ids on one stream.
- :class:`TrackEmbeddings` (topic ``faces.embeddings``): an ended track's embeddings and
  best shot, for the sightings store; biometric, so kept off the tracks topic.
- :class:`SightingAlert` (alerts topic): a stored sighting matches a person just put on the
  watch list.

Event ids are built from the stream, frame index and track id only, so reprocessing the
same input gives the same ids and consumers can drop duplicates after a crash. The JSON
Schema files in ``schemas/`` are generated from these models
(``python -m stream_worker.messages.schemas``); a test fails when they differ.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

FRAME_SCHEMA = "facestream.frame/2"
TRACK_SCHEMA = "facestream.track/3"
EMBEDDINGS_SCHEMA = "facestream.track-embeddings/2"
RETRACTION_SCHEMA = "facestream.retraction/1"
"""An erased identity: the event ids, on one stream, of messages that carried it."""
SIGHTING_ALERT_SCHEMA = "facestream.sighting-alert/1"
SCHEMA_DIR = Path(__file__).with_name("schemas")


def _is_none(value: Any) -> bool:
    return value is None


class Message(BaseModel):
    """Base of every message: frozen, no unknown keys, finite numbers; JSON by alias."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False,
                              json_schema_serialization_defaults_required=True, use_attribute_docstrings=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def encode(self) -> bytes:
        """Compact JSON, as published."""
        return self.model_dump_json(by_alias=True).encode()


@cache
def schema_for(schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a message schema id."""
    name = schema_id.replace("facestream.", "").replace("/", ".v") + ".schema.json"
    return dict(json.loads((SCHEMA_DIR / name).read_text()))


# --- parts ----------------------------------------------------------------------------------


class IdentityRef(Message):
    """An identity decision."""

    identity_id: str = Field(alias="id")
    name: str
    score: float
    """Cosine similarity with the identity's best template (4 decimals)."""
    decision: Literal["match", "unknown"]

    _score = field_validator("score")(lambda v: round(v, 4))


class StreamGap(Message):
    """Frames a live source lost just before this frame (a dropped connection, frames
    dropped to keep up)."""

    frames_lost: int = Field(ge=0)
    seconds: float = Field(ge=0)

    _seconds = field_validator("seconds")(lambda v: round(v, 3))


class Pose(Message):
    """Head pose in degrees (null when the landmarks are degenerate)."""

    yaw: float | None
    pitch: float | None
    roll: float | None


class ExpressionEstimate(Message):
    value: str
    """The most likely of angry, disgust, fear, happy, neutral, sad, surprise."""
    probability: float = Field(ge=0, le=1)


def _attribute_field() -> Any:
    return Field(None, exclude_if=_is_none, description=(
        "P(attribute) from the trained heads, smoothed over the track (quality-weighted mean) when the face has "
        "one: Eyeglasses, Wearing_Hat, Facial_Hair, Mustache, Goatee, Bald, Smiling, Mouth_Slightly_Open (the "
        "attributes the shipped heads reach balanced accuracy 0.85 on; README, 'Task heads'). Absent with the "
        "Cydral age and gender models."))


def _expression_field() -> Any:
    return Field(None, exclude_if=_is_none, description=(
        "The expression head's most likely class (smoothed over the track like the attributes); absent when no "
        "expression head is shipped."))


def expression_estimate(probabilities: dict[str, float]) -> ExpressionEstimate | None:
    if not probabilities:
        return None
    label = max(probabilities, key=probabilities.__getitem__)
    return ExpressionEstimate(value=label, probability=round(min(1.0, max(0.0, probabilities[label])), 4))


def attribute_estimate(probabilities: dict[str, float]) -> dict[str, float] | None:
    return {k: round(min(1.0, max(0.0, v)), 4) for k, v in probabilities.items()} if probabilities else None


class FaceTraits(Message):
    """A face's age, gender, attributes, expression, pose and quality: the track's smoothed
    estimate when the face belongs to a track, the frame's own otherwise."""

    age: float = Field(ge=0)
    age_std: float = Field(ge=0)
    gender: Literal["female", "male"]
    gender_score: float = Field(ge=0, le=1)
    pose: Pose
    quality: float = Field(ge=0, le=1)
    attributes: dict[str, float] | None = _attribute_field()
    expression: ExpressionEstimate | None = _expression_field()

    @classmethod
    def estimate(cls, age: float, age_std: float, male: float, pose: np.ndarray, quality: float,
                 attributes: dict[str, float] | None = None, expression: dict[str, float] | None = None
                 ) -> FaceTraits:
        yaw, pitch, roll = (None if math.isnan(v) else round(float(v), 1) for v in pose)
        return cls(age=round(age, 1), age_std=round(age_std, 1), gender="male" if male > 0.5 else "female",
                   gender_score=round(max(male, 1.0 - male), 4), pose=Pose(yaw=yaw, pitch=pitch, roll=roll),
                   quality=round(quality, 3), attributes=attribute_estimate(attributes or {}),
                   expression=expression_estimate(expression or {}))


Point = tuple[float, float]


class FaceRecord(Message):
    """One face of a frame."""

    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in pixels of the frame (x2, y2 exclusive)."""
    score: float = Field(ge=0, le=1)
    landmarks: tuple[Point, Point, Point, Point, Point]
    """Left eye, right eye, nose, left and right mouth corner ("left": the image's left)."""
    track_id: int | None
    """Null until the track is confirmed."""
    quality: float = Field(ge=0, le=1)
    pose: Pose
    age: float = Field(ge=0)
    age_std: float = Field(ge=0)
    gender: Literal["female", "male"]
    gender_score: float = Field(ge=0, le=1)
    identity: IdentityRef | None
    """The track's identity decision, when the face belongs to an identified track."""
    attributes: dict[str, float] | None = _attribute_field()
    expression: ExpressionEstimate | None = _expression_field()


# --- frames ---------------------------------------------------------------------------------


class FrameResult(Message):
    """Every processed frame of a stream, with the faces found on it."""

    schema_id: Literal["facestream.frame/2"] = Field(FRAME_SCHEMA, alias="schema")
    event_id: str
    """stream_id:frame_index; deterministic, for de-duplication."""
    stream_id: str = Field(min_length=1)
    frame_index: int = Field(ge=0)
    """Index of the frame in its stream, from 0."""
    pts_ms: float | None
    """Presentation time in the stream, milliseconds."""
    received_utc: str = Field(json_schema_extra={"format": "date-time"})
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    faces: tuple[FaceRecord, ...]
    gap: StreamGap | None = Field(None, exclude_if=_is_none)

    @model_validator(mode="before")
    @classmethod
    def _event_id(cls, values: Any) -> Any:
        if isinstance(values, dict) and "event_id" not in values:
            values = {**values, "event_id": f"{values.get('stream_id')}:{values.get('frame_index')}"}
        return values

    _pts = field_validator("pts_ms")(lambda v: None if v is None else round(v, 3))


# --- tracks ---------------------------------------------------------------------------------


class BestShotRef(Message):
    frame_index: int = Field(ge=0)
    box: tuple[float, float, float, float]
    quality: float
    thumbnail: str | None
    """Where the best-shot JPEG is, if it was kept: a file path (--thumbnails) or
    kafka:<thumbnails topic>/<stream id>:track:<track id>."""


class Vote(Message):
    identity_id: str = Field(alias="id")
    name: str
    weight: float
    searches: int = Field(ge=1)


class AgeEstimate(Message):
    value: float
    spread: float


class GenderEstimate(Message):
    value: Literal["female", "male"]
    male_probability: float = Field(ge=0, le=1)


class TrackSummary(Message):
    first_frame: int = Field(ge=0)
    last_frame: int = Field(ge=0)
    first_pts_ms: float | None
    last_pts_ms: float | None
    frames: int = Field(ge=1)
    """Frames on which the face was seen."""
    best_shot: BestShotRef
    identity: IdentityRef | None
    votes: tuple[Vote, ...]
    age: AgeEstimate
    gender: GenderEstimate
    attributes: dict[str, float] | None = _attribute_field()
    expression: ExpressionEstimate | None = _expression_field()
    first_utc: str | None
    """When the track's first frame was received (ISO 8601, UTC; None in the rare case it is
    not known). Embeddings are not here: they are biometric data, published on a topic of
    their own (:class:`TrackEmbeddings`)."""
    last_utc: str | None


class _TrackEventBase(Message):
    schema_id: Literal["facestream.track/3"] = Field(TRACK_SCHEMA, alias="schema")
    event_id: str
    """Deterministic: stream:track:id:started | identified:frame | ended."""
    stream_id: str = Field(min_length=1)
    track_id: int = Field(ge=1)
    frame_index: int = Field(ge=0)
    pts_ms: float | None
    identity: IdentityRef | None = Field(None, exclude_if=_is_none)

    @model_validator(mode="before")
    @classmethod
    def _event_id(cls, values: Any) -> Any:
        if isinstance(values, dict) and "event_id" not in values:
            base = f"{values.get('stream_id')}:track:{values.get('track_id')}"
            kind = values.get("type", cls.model_fields["type"].default)
            suffix = f"identified:{values.get('frame_index')}" if kind == "track_identified" else \
                str(kind).removeprefix("track_")
            values = {**values, "event_id": f"{base}:{suffix}"}
        return values

    _pts = field_validator("pts_ms")(lambda v: None if v is None else round(v, 3))


class TrackStarted(_TrackEventBase):
    """A track was confirmed (after ``tracker.min_hits`` matches)."""

    type: Literal["track_started"] = "track_started"


class TrackIdentified(_TrackEventBase):
    """A track was identified, or changed identity (the votes turned)."""

    type: Literal["track_identified"] = "track_identified"
    identity: IdentityRef
    previous_identity: IdentityRef | None


class TrackEnded(_TrackEventBase):
    """A track ended (missed too long, the stream ended, its partition moved).

    In the process, the event also carries the track's embeddings (:attr:`embeddings`, a
    private attribute: never serialised, so never on the tracks topic), for the sinks that
    publish or store them."""

    type: Literal["track_ended"] = "track_ended"
    summary: TrackSummary
    _embeddings: "TrackShots | None" = PrivateAttr(default=None)

    @property
    def embeddings(self) -> "TrackShots | None":
        return self._embeddings

    def with_embeddings(self, shots: "TrackShots") -> "TrackEnded":
        self._embeddings = shots
        return self


TrackEvent = Annotated[TrackStarted | TrackIdentified | TrackEnded, Field(discriminator="type")]
"""A face track appeared, was identified (or changed identity), or ended."""


class Retraction(Message):
    """An identity was erased: the event ids, on one stream, of messages that carried it."""

    schema_id: Literal["facestream.retraction/1"] = Field(RETRACTION_SCHEMA, alias="schema")
    event_id: str
    type: Literal["identity_erased"] = "identity_erased"
    stream_id: str = Field(min_length=1)
    identity_id: str
    retracted_event_ids: tuple[str, ...]
    """Frame and track event ids on this stream that carried the identity."""
    retracted_utc: str = Field(json_schema_extra={"format": "date-time"})


FRAME_INPUT_SCHEMA = "facestream.frame-input/1"
_VIDEO_TYPES = ["video/h264", "video/h265", "video/mp2t"]


class FrameInputHeaders(Message):
    """Headers of a message on the frames topic, as a JSON object of header name to UTF-8
    value. The message key is the stream id; the value is the payload named by content-type:
    one JPEG or PNG image, an H.264/H.265 Annex B chunk that starts with a keyframe (a closed
    group of pictures), or an MPEG-TS segment."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "allOf": [{"if": {"properties": {"content-type": {"enum": _VIDEO_TYPES}}}, "then": {"required": ["fs-fps"]}}],
    })

    content_type: Literal["image/jpeg", "image/png", "video/h264", "video/h265", "video/mp2t"] = Field(
        alias="content-type")
    stream_id: str = Field(alias="fs-stream-id", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """Camera/stream id; equals the message key."""
    frame_index: str = Field(alias="fs-frame-index", pattern=r"^[0-9]+$")
    """Index of the (first) frame in its stream, from 0."""
    capture_ms: str = Field(alias="fs-capture-ms", pattern=r"^[0-9]+$")
    """Capture time, milliseconds since the Unix epoch."""
    pts_ms: str | None = Field(None, alias="fs-pts-ms", pattern=r"^[0-9]+(\.[0-9]+)?$", exclude_if=_is_none)
    """Presentation time of the (first) frame, ms."""
    fps: str | None = Field(None, alias="fs-fps", pattern=r"^[0-9]+(\.[0-9]+)?$", exclude_if=_is_none)
    """Video chunks: frame rate, timing the chunk's later frames."""


class SightingAlert(Message):
    """A stored sighting matches a person just enrolled on the watch list (``gallery enrol
    --watch``): published on the alerts topic, keyed by the sighting's stream id."""

    schema_id: Literal["facestream.sighting-alert/1"] = Field(SIGHTING_ALERT_SCHEMA, alias="schema")
    event_id: str
    """Deterministic: rescan:<identity id>:<sighting id>."""
    type: Literal["sighting_matched"] = "sighting_matched"
    identity_id: str
    name: str
    sighting_id: str
    stream_id: str = Field(min_length=1)
    track_id: int = Field(ge=1)
    first_frame: int = Field(ge=0)
    last_frame: int = Field(ge=0)
    start_utc: str
    end_utc: str
    score: float
    """Best cosine between the enrolled templates and the sighting's embeddings (4 decimals)."""
    threshold: float
    pseudonym: str | None = None
    """The stranger's pseudonym the sighting had (``unknown-<n>``), if it was not named."""

    _score = field_validator("score", "threshold")(lambda v: round(v, 4))


@dataclass(frozen=True)
class TrackShots:
    """A track's embeddings, best shot first (in-process; see :class:`TrackEmbeddings`)."""

    space_id: str
    qualities: np.ndarray
    vectors: np.ndarray


class EmbeddingRecord(Message):
    quality: float
    vector: str
    """Little-endian float32, base64."""


class TrackEmbeddings(Message):
    """What the sightings store needs of an ended track, biometrics included: published on
    the embeddings topic (``faces.embeddings``), keyed by stream id like the tracks, so that
    consumers that must not see biometrics never read them. ``event_id`` is the
    ``track_ended`` event's."""

    schema_id: Literal["facestream.track-embeddings/2"] = Field(EMBEDDINGS_SCHEMA, alias="schema")
    event_id: str
    stream_id: str = Field(min_length=1)
    track_id: int = Field(ge=1)
    identity: IdentityRef | None = Field(None, exclude_if=_is_none)
    summary: TrackSummary
    space_id: str = Field(min_length=1)
    embeddings: tuple[EmbeddingRecord, ...] = Field(min_length=1, max_length=5)
    """The best shot's first, then up to 4 others kept for diversity."""
    thumbnail_jpeg: str | None = None
    """The best-shot JPEG, base64."""

    @classmethod
    def of(cls, event: TrackEnded, jpeg: bytes | None) -> "TrackEmbeddings | None":
        shots = event.embeddings
        if shots is None:
            return None
        records = tuple(EmbeddingRecord(quality=round(float(q), 4),
                                        vector=base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode())
                        for q, v in zip(shots.qualities, shots.vectors, strict=True))
        return cls(event_id=event.event_id, stream_id=event.stream_id, track_id=event.track_id,
                   identity=event.identity, summary=event.summary, space_id=shots.space_id, embeddings=records,
                   thumbnail_jpeg=None if jpeg is None else base64.b64encode(jpeg).decode())

    def vectors(self) -> np.ndarray:
        """(n, dim) float32; a vector that does not decode is :class:`ValueError`."""
        try:
            rows = [np.frombuffer(base64.b64decode(e.vector, validate=True), "<f4") for e in self.embeddings]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.event_id}: an embedding is not base64 float32 ({exc})") from None
        if len({len(r) for r in rows}) != 1 or not 1 <= len(rows[0]) <= 4096:
            raise ValueError(f"{self.event_id}: embeddings of different or impossible sizes")
        return np.stack(rows).astype(np.float32)
