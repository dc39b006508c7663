"""The Kafka wire format: frame messages in, result messages out, dead letters.

Frames topic (input), one message per image or per encoded video chunk, keyed by the
stream (camera) id so a camera's frames stay in order on one partition:

================  =========================================================================
header            value (UTF-8 text)
================  =========================================================================
content-type      ``image/jpeg`` or ``image/png`` (one frame), ``video/h264`` or
                  ``video/h265`` (Annex B elementary stream chunk), ``video/mp2t``
                  (MPEG-TS segment)
fs-stream-id      the stream id (must equal the message key when a key is set)
fs-frame-index    index of the frame (for a video chunk: of its first frame), from 0
fs-capture-ms     capture time, milliseconds since the Unix epoch
fs-pts-ms         optional: presentation time of the (first) frame in the stream, ms
fs-fps            video chunks: frame rate, to time the chunk's later frames
================  =========================================================================

``stream_worker/messages/schemas/frame-input.v1.schema.json`` describes the same headers for
validators. Result topics carry the worker's JSON messages (``application/json``) keyed by
stream id, with headers ``fs-schema`` (schema id), ``fs-event-id`` and ``fs-stream-id``.
Best shots go to the thumbnails topic, one JPEG per ended track (``image/jpeg``), keyed
:func:`thumbnail_key` with ``fs-stream-id`` and ``fs-track-id`` headers; the track's
summary refers to it as :func:`thumbnail_reference`.
Dead letters keep the original key, value and headers and add ``fs-dlq-kind`` (one of
:data:`DEAD_LETTER_KINDS`, for routing and metrics), ``fs-dlq-reason`` (the error, for
people), ``fs-dlq-topic``, ``fs-dlq-partition``, ``fs-dlq-offset`` and ``fs-dlq-worker``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from engines.errors import FaceStreamError
from stream_worker.pipeline.frames import InvalidStreamIdError, check_stream_id

CONTENT_TYPE = "content-type"
STREAM_ID = "fs-stream-id"
FRAME_INDEX = "fs-frame-index"
CAPTURE_MS = "fs-capture-ms"
PTS_MS = "fs-pts-ms"
FPS = "fs-fps"
SCHEMA = "fs-schema"
EVENT_ID = "fs-event-id"
DLQ_REASON = "fs-dlq-reason"
DLQ_KIND = "fs-dlq-kind"
TRACK_ID = "fs-track-id"

PRODUCE_FORMATS = ("jpeg", "h264")
"""What ``facestream produce`` writes: JPEG frames, or H.264 chunks (one closed GOP each)."""
IMAGE_TYPES = ("image/jpeg", "image/png")
VIDEO_TYPES = {"video/h264": "h264", "video/h265": "hevc", "video/mp2t": "mpegts"}
"""Content type -> FFmpeg codec (elementary streams) or container format (MPEG-TS)."""
JSON_TYPE = "application/json"

Headers = list[tuple[str, bytes]]


DeadLetterKind = Literal["header", "key", "content-type", "oversized", "payload", "partition", "decode", "pipeline"]
DEAD_LETTER_KINDS: tuple[DeadLetterKind, ...] = get_args(DeadLetterKind)
"""Why a message was dead-lettered, as a fixed set: the ``fs-dlq-kind`` header and the
``reason`` label of ``facestream_dead_letters``. ``header``: a header is missing or
malformed; ``key``: the key differs from the stream id; ``content-type``: not a supported
type; ``oversized``: over ``max_message_bytes`` or the decode pixel limit; ``payload``:
empty or missing; ``partition``: the stream arrived on a second partition; ``decode``:
the payload does not decode; ``pipeline``: the frames decoded but the pipeline failed on
them."""


class MalformedMessageError(FaceStreamError):
    """An input message that cannot become frames: it goes to the dead-letter topic."""

    skippable = True

    def __init__(self, message: str, *, kind: DeadLetterKind) -> None:
        super().__init__(message)
        self.kind: DeadLetterKind = kind


@dataclass(frozen=True)
class FrameMessage:
    """The parsed headers of one frames-topic message."""

    stream_id: str
    content_type: str
    frame_index: int
    capture_ms: int
    pts_ms: float | None = None
    fps: float | None = None

    @property
    def is_video(self) -> bool:
        return self.content_type in VIDEO_TYPES

    def headers(self) -> Headers:
        out = [
            (CONTENT_TYPE, self.content_type.encode()), (STREAM_ID, self.stream_id.encode()),
            (FRAME_INDEX, str(self.frame_index).encode()), (CAPTURE_MS, str(self.capture_ms).encode()),
        ]
        if self.pts_ms is not None:
            out.append((PTS_MS, f"{self.pts_ms:.6f}".encode()))
        if self.fps is not None:
            out.append((FPS, f"{self.fps:.6f}".encode()))
        return out


def header_dict(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text; the last value of a repeated header wins."""
    out = {}
    for name, value in headers or ():
        try:
            out[name.lower()] = (value or b"").decode()
        except UnicodeDecodeError:
            raise MalformedMessageError(f"header {name!r} is not UTF-8 text", kind="header") from None
    return out


def _number(headers: dict[str, str], name: str, kind: type, *, required: bool) -> Any:
    raw = headers.get(name)
    if raw is None or raw == "":
        if required:
            raise MalformedMessageError(f"missing header {name}", kind="header")
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise MalformedMessageError(f"header {name} is not a{'n integer' if kind is int else ' number'}: {raw[:40]!r}",
                                    kind="header") from None
    if value < 0 or math.isnan(value):
        raise MalformedMessageError(f"header {name} must be >= 0, got {raw[:40]!r}", kind="header")
    return value


def parse_frame_message(key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> FrameMessage:
    """Validate a frames-topic message's key and headers (the payload is decoded later)."""
    values = header_dict(headers)
    content_type = values.get(CONTENT_TYPE, "").split(";")[0].strip().lower()
    if not content_type:
        raise MalformedMessageError(f"missing header {CONTENT_TYPE}", kind="header")
    if content_type not in IMAGE_TYPES and content_type not in VIDEO_TYPES:
        raise MalformedMessageError(
            f"unsupported {CONTENT_TYPE} {content_type[:60]!r}: expected one of {[*IMAGE_TYPES, *VIDEO_TYPES]}",
            kind="content-type",
        )
    stream_id = values.get(STREAM_ID, "")
    if not stream_id:
        raise MalformedMessageError(f"missing header {STREAM_ID}", kind="header")
    try:
        check_stream_id(stream_id)
    except InvalidStreamIdError as exc:
        raise MalformedMessageError(f"header {STREAM_ID}: {exc}", kind="header") from None
    if key is not None and key != stream_id.encode():
        raise MalformedMessageError(f"message key {key[:60]!r} differs from {STREAM_ID} {stream_id[:60]!r}", kind="key")
    fps = _number(values, FPS, float, required=content_type in VIDEO_TYPES)
    if fps == 0:
        raise MalformedMessageError(f"header {FPS} must be > 0", kind="header")
    return FrameMessage(
        stream_id=stream_id, content_type=content_type,
        frame_index=_number(values, FRAME_INDEX, int, required=True),
        capture_ms=_number(values, CAPTURE_MS, int, required=True),
        pts_ms=_number(values, PTS_MS, float, required=False), fps=fps,
    )


def result_headers(message: Any) -> Headers:
    """The headers of a result message (a :class:`~stream_worker.messages.results.Message`
    with ``schema_id``, ``event_id`` and ``stream_id``)."""
    return [
        (CONTENT_TYPE, JSON_TYPE.encode()), (SCHEMA, message.schema_id.encode()),
        (EVENT_ID, message.event_id.encode()), (STREAM_ID, message.stream_id.encode()),
    ]


def thumbnail_key(stream_id: str, track_id: int) -> str:
    """The thumbnails-topic key of a track's best shot (its track events' id prefix)."""
    return f"{stream_id}:track:{track_id}"


def thumbnail_reference(topic: str, stream_id: str, track_id: int) -> str:
    """What a track summary's ``best_shot.thumbnail`` says for a best shot on Kafka."""
    return f"kafka:{topic}/{thumbnail_key(stream_id, track_id)}"


def thumbnail_headers(stream_id: str, track_id: int) -> Headers:
    return [(CONTENT_TYPE, b"image/jpeg"), (STREAM_ID, stream_id.encode()), (TRACK_ID, str(track_id).encode())]


def encode_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def dead_letter_headers(
    headers: Sequence[tuple[str, bytes | None]] | None, kind: DeadLetterKind, reason: str, topic: str, partition: int,
    offset: int, worker: str,
) -> Headers:
    """The original headers plus why and where the message failed."""
    extra = {DLQ_KIND: kind, DLQ_REASON: reason[:1000], "fs-dlq-topic": topic, "fs-dlq-partition": str(partition),
             "fs-dlq-offset": str(offset), "fs-dlq-worker": worker}
    kept = [(n, v or b"") for n, v in headers or () if n not in extra]
    return kept + [(n, v.encode()) for n, v in extra.items()]
