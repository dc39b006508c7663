"""Exact, pickle-free snapshots of a stream's pipeline state (tracker, tracks, schedules),
and the partition checkpoints that carry them.

The Kafka worker checkpoints every partition's streams with its committed offset, so a
worker that takes a partition over (after a crash or a rebalance) continues with the
same tracks, ids and schedules and reproduces the results a single uninterrupted run
gives. The snapshots are typed models (their JSON Schemas are generated like the
messages'). Arrays keep their dtype and bytes (:class:`PackedArray`, base64); floats go
through JSON's shortest round-trip representation, so a restored state is bit-identical.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from stream_worker.messages.results import IdentityRef, Message

STATE_FORMAT = "facestream.stream-state/1"
CHECKPOINT_FORMAT = "facestream.partition-checkpoint/1"


class PackedArray(Message):
    """A numpy array, exactly: dtype, shape and its bytes in base64."""

    dtype: str
    shape: tuple[int, ...]
    data: str

    @field_validator("dtype")
    @classmethod
    def _plain(cls, value: str) -> str:
        dtype = np.dtype(value)
        if dtype.hasobject or dtype.kind not in "biuf":
            raise ValueError(f"only numeric arrays are allowed in a checkpoint, got {value!r}")
        return value

    @classmethod
    def pack(cls, array: np.ndarray) -> PackedArray:
        array = np.ascontiguousarray(array)
        return cls(dtype=array.dtype.str, shape=array.shape, data=base64.b64encode(array.tobytes()).decode())

    def unpack(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.data), dtype=np.dtype(self.dtype)).reshape(self.shape).copy()


def pack_array(array: np.ndarray | None) -> PackedArray | None:
    return None if array is None else PackedArray.pack(array)


def unpack_array(packed: PackedArray | None) -> np.ndarray | None:
    return None if packed is None else packed.unpack()


def pack_bytes(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unpack_bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class TrackerTrack(Message):
    """One track of the tracker (confirmed or not): its Kalman state and running embedding."""

    key: int
    x: PackedArray
    P: PackedArray
    embedding: PackedArray | None
    last_frame: int
    hits: int = Field(ge=0)
    missed: int = Field(ge=0)
    track_id: int | None


class TrackerState(Message):
    next_key: int = Field(ge=0)
    next_id: int = Field(ge=1)
    frame: int
    tracks: tuple[TrackerTrack, ...]


class SceneState(Message):
    previous: PackedArray | None
    """The last frame's 64x36 grey thumbnail."""


class BestShotState(Message):
    frame_index: int = Field(ge=0)
    box: tuple[float, float, float, float]
    quality: float
    embedding: PackedArray
    jpeg: str | None = None
    """The best-shot JPEG in base64; in a partition checkpoint it travels as a message of its
    own and ``jpeg_ref`` names it (see :func:`detach_shots`)."""
    jpeg_ref: str | None = None


class ShotState(Message):
    quality: float
    embedding: PackedArray


class VoteState(Message):
    name: str
    weight: float
    searches: int = Field(ge=0)
    best_score: float


class TrackRecord(Message):
    """What a track knows (:class:`stream_worker.pipeline.track_state.TrackState`)."""

    stream_id: str
    track_id: int = Field(ge=1)
    first_frame: int
    first_pts_ms: float | None
    last_frame: int
    last_pts_ms: float | None
    frames: int = Field(ge=0)
    last_analysed_frame: int
    sharpness: float
    searched_quality: float
    identity: IdentityRef | None
    best: BestShotState | None
    votes: dict[str, VoteState]
    ages: tuple[tuple[float, float], ...]
    """Recent (age, weight) samples, oldest first."""
    male_weighted: float
    weight: float
    first_utc: str | None = None
    """When the track's first frame was received (ISO 8601 UTC); absent in older checkpoints."""
    last_utc: str | None = None
    shots: tuple[ShotState, ...] = ()
    """Up to 4 embedded faces besides the best shot, kept for diversity (sightings)."""
    attributes_weighted: dict[str, float] = {}
    """Quality-weighted sums of the attribute probabilities (divided by ``weight``)."""
    expression_weighted: dict[str, float] = {}


class StreamCheckpoint(Message):
    """A stream's pipeline state. ``closed``: only what a fresh start after the stream's
    tracks ended must keep (the next track id, the last frame)."""

    format: Literal["facestream.stream-state/1"] = STATE_FORMAT
    last_frame: int
    next_track_id: int = Field(ge=1)
    closed: bool
    last_full_detection: int | None = None
    tracker: TrackerState | None = None
    scene: SceneState | None = None
    tracks: tuple[TrackRecord, ...] = ()


class StreamNumbering(Message):
    """A stream's frame numbering on the frames topic."""

    index_offset: int
    """Added to the producer's frame indices after it restarted its numbering."""
    last_capture_ms: int


class PartitionCheckpoint(Message):
    """A partition's committed offset and the state of its streams, on the state topic."""

    format: Literal["facestream.partition-checkpoint/1"] = CHECKPOINT_FORMAT
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    """The committed offset: replay starts here."""
    worker: str
    written_utc: str
    streams: dict[str, StreamCheckpoint | None]
    inputs: dict[str, StreamNumbering]


# --- best shots beside the checkpoint ------------------------------------------------------------
#
# A partition checkpoint carries its tracks' whole state but their best-shot JPEGs. Each JPEG
# is a message of its own on the state topic, keyed by the checkpoint's key and the JPEG's
# digest, and the track refers to it by that key ("jpeg_ref"). So a best shot is written
# once, when it first appears in a checkpoint, rather than with every checkpoint.

SHOT_MARK = "/shot/"


def shot_key(checkpoint_key: str, jpeg: bytes) -> str:
    return f"{checkpoint_key}{SHOT_MARK}{hashlib.sha256(jpeg).hexdigest()[:32]}"


def is_shot_of(key: str, checkpoint_key: str) -> bool:
    return key.startswith(checkpoint_key + SHOT_MARK)


def _bests(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The best shots of a partition checkpoint in its JSON form."""
    for stream in state.get("streams", {}).values():
        for track in (stream or {}).get("tracks", []):
            if track.get("best") is not None:
                yield track["best"]


def detach_shots(state: dict[str, Any], checkpoint_key: str) -> dict[str, bytes]:
    """Move every best-shot JPEG out of a partition checkpoint (in place) into a reference;
    returns the JPEGs by key."""
    shots = {}
    for best in _bests(state):
        jpeg = unpack_bytes(best.get("jpeg"))
        if jpeg is not None:
            key = shot_key(checkpoint_key, jpeg)
            shots[key] = jpeg
            best["jpeg"], best["jpeg_ref"] = None, key
    return shots


def shot_refs(state: dict[str, Any]) -> set[str]:
    """The best-shot keys a partition checkpoint refers to."""
    return {best["jpeg_ref"] for best in _bests(state) if best.get("jpeg_ref") is not None}


def attach_shots(state: dict[str, Any], shots: Mapping[str, bytes]) -> list[str]:
    """Put the referenced JPEGs back into a partition checkpoint (in place), as
    :meth:`TrackState.from_state` reads them; returns the references not found (those
    tracks go on without a thumbnail)."""
    missing = []
    for best in _bests(state):
        key, best["jpeg_ref"] = best.get("jpeg_ref"), None
        if key is not None:
            jpeg = shots.get(key)
            if jpeg is None:
                missing.append(key)
            best["jpeg"] = pack_bytes(jpeg)
    return missing
