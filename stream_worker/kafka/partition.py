"""What a Kafka worker holds for one owned partition, as one object.

A partition carries its streams (cameras keyed onto it), each with its decoder and frame
numbering, the offset up to which everything is done, whether anything changed since the
last checkpoint, the best-shot keys its checkpoints refer to, and its lag. Assigning a
partition creates a :class:`PartitionState`; revoking it drops that one object (and the
pipeline state of its streams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream_worker.kafka.decode import StreamDecoder
from stream_worker.messages.state import StreamNumbering


@dataclass
class StreamInput:
    """A stream's decoder and frame numbering (the numbering is kept in checkpoints)."""

    decoder: StreamDecoder
    index_offset: int = 0
    """Added to the producer's frame indices after it restarted its numbering."""
    last_capture_ms: int = -1

    def numbering(self) -> StreamNumbering:
        return StreamNumbering(index_offset=self.index_offset, last_capture_ms=self.last_capture_ms)


@dataclass
class PartitionState:
    tp: Any
    """kafka-python's TopicPartition."""
    position: int | None = None
    """Next offset to commit: every record before it is done (results acknowledged or dead-lettered)."""
    streams: dict[str, StreamInput] = field(default_factory=dict)
    dirty: bool = False
    """Input consumed since the last checkpoint."""
    shots: set[str] = field(default_factory=set)
    """Best-shot keys on the state topic that this partition's checkpoints wrote."""
    lag: int | None = None
    """Messages behind the newest, as of the last poll."""

    def stream(self, stream_id: str, *, max_pixels: int) -> StreamInput:
        """The stream's input, created on its first message."""
        found = self.streams.get(stream_id)
        if found is None:
            found = self.streams[stream_id] = StreamInput(StreamDecoder(stream_id, max_pixels=max_pixels))
        return found
