"""The decoded frame that travels from sources into the pipeline, and the one rule for
stream ids.

A stream id names a camera everywhere: in messages, as the Kafka key, in metrics labels,
and in file names (thumbnail folders, one video per stream). So it is checked once, where
it enters (the command line, the control file, a Kafka header), by :func:`check_stream_id`,
and never sanitised: two ids that differ stay different, and no path is built from an
unchecked id. A :class:`Frame` refuses an id that breaks the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from engines.errors import FaceStreamError
from stream_worker.messages.results import StreamGap

STREAM_ID_RULE = "1 to 64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class InvalidStreamIdError(FaceStreamError, ValueError):
    """A stream id that breaks the rule (the message says which)."""

    skippable = True


def check_stream_id(raw: str) -> str:
    """``raw`` if it is a valid stream id, else :class:`InvalidStreamIdError`."""
    if not isinstance(raw, str) or not _STREAM_ID.fullmatch(raw):
        shown = raw[:80] if isinstance(raw, str) else type(raw).__name__
        raise InvalidStreamIdError(f"stream id {shown!r} is not valid: {STREAM_ID_RULE}")
    return raw


def stream_id_from(name: str, fallback: str) -> str:
    """A valid stream id derived from a file name (other characters become '_'), or ``fallback``."""
    derived = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:64]
    return derived if derived else fallback


@dataclass(frozen=True)
class Frame:
    stream_id: str
    index: int
    """Index of the frame in its stream, from 0 (frames lost by a live source still count)."""
    pts_ms: float | None
    """Presentation time from the stream, in milliseconds."""
    image: np.ndarray
    """BGR uint8."""
    received: datetime
    gap: StreamGap | None = None
    """Frames lost just before this one."""

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)

    @property
    def received_utc(self) -> str:
        return self.received.isoformat(timespec="milliseconds")


def now_utc() -> datetime:
    return datetime.now(UTC)
