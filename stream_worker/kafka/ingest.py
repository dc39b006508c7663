"""From frames-topic records to frames, and dead letters for input that is at fault.

:class:`Ingest` checks each record (size, headers, key, payload, which partition its stream
lives on), decodes it with its stream's decoder and queues its frames per stream, in
order; a producer's retry (frames already seen) is counted and dropped, and a producer that
restarted its numbering is continued. Only :class:`MalformedMessageError` (the message's
own fault) makes a dead letter; any other error propagates (the worker does not blame the
input for it).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_worker.config import KafkaConfig
from stream_worker.kafka.partition import PartitionState
from stream_worker.kafka.publish import KafkaPublisher
from stream_worker.kafka.wire import (
    DEAD_LETTER_KINDS,
    DeadLetterKind,
    MalformedMessageError,
    dead_letter_headers,
    parse_frame_message,
)
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.frames import Frame

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    records: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Pending:
    """A decoded frame waiting for the pipeline, with the record it came from."""

    frame: Frame
    record: Any


PendingFrames = dict[str, collections.deque[Pending]]
"""Per stream, its frames in order."""


class DeadLetters:
    """Sends input that is at fault to the dead-letter topic: the original key, value and
    headers, with why (``fs-dlq-kind``, ``fs-dlq-reason``) and where it came from."""

    def __init__(self, publisher: KafkaPublisher, config: KafkaConfig, worker_id: str, stats: IngestStats,
                 metrics: WorkerMetrics | None) -> None:
        self.publisher = publisher
        self.config = config
        self.worker_id = worker_id
        self.stats = stats
        self.metrics = metrics
        if metrics is not None:  # every kind from the start at 0, so alerts can rate() them
            for kind in DEAD_LETTER_KINDS:
                metrics.dead_letters.labels(kind)

    def send(self, record: Any, kind: DeadLetterKind, reason: str) -> None:
        value = record.value or b""
        headers = dead_letter_headers(record.headers, kind, reason, record.topic, record.partition, record.offset,
                                      self.worker_id)
        limit = self.config.max_message_bytes
        if len(value) > limit:  # keep what fits; say so
            headers.append(("fs-dlq-original-bytes", str(len(value)).encode()))
            value = value[:limit]
        self.publisher.send(self.config.dead_letter_topic, record.key, value, headers)
        self.stats.dead_letters += 1
        self.stats.reasons[kind] += 1
        if self.metrics is not None:
            self.metrics.dead_letters.labels(kind).inc()
        log.warning("dead letter: %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)


class Ingest:
    def __init__(self, config: KafkaConfig, dead_letters: DeadLetters, stats: IngestStats, *, max_pixels: int,
                 last_frame: Any) -> None:
        self.config = config
        self.dead_letters = dead_letters
        self.stats = stats
        self.max_pixels = max_pixels
        self.last_frame = last_frame
        """``stream id -> index of the last frame the pipeline processed`` (-1: none)."""
        self.frames_per_record = 1.0
        """Running mean of frames per input message (1 for images, a GOP for video chunks)."""

    def batch(self, partitions: Mapping[Any, PartitionState], batch: Mapping[Any, list[Any]]) -> PendingFrames:
        """Every record of a poll, decoded (or dead-lettered); each owned partition's position
        moves past its records."""
        pending: PendingFrames = collections.defaultdict(collections.deque)
        for tp, records in batch.items():
            partition = partitions.get(tp)
            if partition is None:
                continue
            for record in records:
                self.stats.records += 1
                self.record(partitions, partition, record, pending)
                partition.position = record.offset + 1
                partition.dirty = True
        return pending

    def record(self, partitions: Mapping[Any, PartitionState], partition: PartitionState, record: Any,
               pending: PendingFrames) -> None:
        try:
            size = len(record.value) if record.value is not None else 0
            if size > self.config.max_message_bytes:
                raise MalformedMessageError(f"oversized message: {size} bytes > max_message_bytes "
                                            f"{self.config.max_message_bytes}", kind="oversized")
            message = parse_frame_message(record.key, record.headers)
            if record.value is None:
                raise MalformedMessageError("no payload", kind="payload")
            for other in partitions.values():
                if other is not partition and message.stream_id in other.streams:
                    raise MalformedMessageError(f"stream {message.stream_id} belongs to partition {other.tp.partition}, "
                                                f"not {partition.tp.partition} (partition count changed?)",
                                                kind="partition")
            source = partition.stream(message.stream_id, max_pixels=self.max_pixels)
            frames = source.decoder.decode(message, record.value)
        except MalformedMessageError as exc:
            self.dead_letters.send(record, exc.kind, str(exc))
            return
        self.frames_per_record += 0.2 * (len(frames) - self.frames_per_record)
        queue = pending[message.stream_id]
        last = queue[-1].frame.index if queue else self.last_frame(message.stream_id)
        if frames and frames[0].index + source.index_offset <= last and message.capture_ms > source.last_capture_ms:
            # Older numbers but newer pictures: the producer restarted its numbering (an edge
            # box rebooted). Continue the stream's numbering rather than drop its frames.
            source.index_offset = last + 1 - frames[0].index
            log.warning("stream %s: the producer restarted its frame numbering at %d; continuing at %d",
                        message.stream_id, frames[0].index, last + 1)
        source.last_capture_ms = max(source.last_capture_ms, message.capture_ms)
        for frame in frames:
            index = frame.index + source.index_offset
            if index <= last:
                self.stats.duplicates += 1  # a producer's retry: the same message again
                continue
            queue.append(Pending(dataclasses.replace(frame, index=index) if source.index_offset else frame, record))
            last = index

    def max_records(self) -> int:
        """Records for the next poll: ``max_poll_frames`` frames (a video chunk holds many),
        at most ``max_poll_records``, so one poll's work stays well within
        ``max_poll_interval_ms``."""
        frames = max(self.frames_per_record, 1.0)
        return max(1, min(self.config.max_poll_records, int(self.config.max_poll_frames / frames)))
