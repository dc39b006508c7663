"""The decoded frame that travels from sources into the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from stream_worker.messages.results import StreamGap


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

    @property
    def received_utc(self) -> str:
        return self.received.isoformat(timespec="milliseconds")


def now_utc() -> datetime:
    return datetime.now(UTC)
