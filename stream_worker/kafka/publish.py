"""Publishing results to the Kafka result topics, for the Kafka worker and for
``facestream run --kafka-out`` (:class:`KafkaSink`).

Each frame result goes to the detections topic and each track event to the tracks topic
(``track_identified`` also to the alerts topic), as JSON keyed by stream id with the
``fs-schema``, ``fs-event-id`` and ``fs-stream-id`` headers. A best shot whose
``track_ended`` summary refers to the thumbnails topic goes there, before the event, and
the track's embeddings and best shot go to the embeddings topic (for the sightings service). The
publisher remembers, per identity and stream, the event ids it published carrying the
identity, so that an erasure can be retracted (:meth:`KafkaPublisher.retract`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any

from gallery.store import utc_now
from stream_worker.kafka.client import KafkaConfig, make_producer
from stream_worker.kafka.wire import (
    Headers,
    result_headers,
    thumbnail_headers,
    thumbnail_key,
    thumbnail_reference,
)
from stream_worker.messages.results import (
    FrameResult,
    Retraction,
    TrackEmbeddings,
    TrackEnded,
    TrackEvent,
    TrackIdentified,
)
from stream_worker.pipeline.face_pipeline import FrameOutput

log = logging.getLogger(__name__)

MAX_LEDGER_IDS = 100_000
"""Event ids remembered per identity and stream for retractions (oldest forgotten first)."""


class KafkaPublisher:
    def __init__(self, producer: Any, config: KafkaConfig) -> None:
        self.producer = producer
        self.config = config
        self.futures: list[Any] = []
        self.too_large = 0
        """Messages above the size limit (logged, not sent)."""
        self.ledger: dict[str, dict[str, collections.deque[str]]] = {}
        """identity id -> stream -> event ids published carrying it."""

    def send(self, topic: str, key: bytes | str | None, value: bytes | None, headers: Headers) -> None:
        from kafka.errors import MessageSizeTooLargeError

        if isinstance(key, str):
            key = key.encode()
        try:
            self.futures.append(self.producer.send(topic, key=key, value=value, headers=headers))
        except MessageSizeTooLargeError as exc:  # never crash-loop on one message
            self.too_large += 1
            log.error("a %d-byte message for %s (key %r) was not sent: %s", len(value or b""), topic, key, exc)

    def publish(self, topic: str, message: FrameResult | TrackEvent | Retraction) -> None:
        self.send(topic, message.stream_id, message.encode(), result_headers(message))

    def _remember(self, identity_id: str, stream_id: str, event_id: str) -> None:
        ids = self.ledger.setdefault(identity_id, {}).setdefault(stream_id, collections.deque(maxlen=MAX_LEDGER_IDS))
        if not ids or ids[-1] != event_id:
            ids.append(event_id)

    def frame(self, output: FrameOutput) -> None:
        """A frame's result, the track events it caused and the best shots of the tracks it ended."""
        result = output.result
        self.publish(self.config.detections_topic, result)
        for face in result.faces:
            if face.identity is not None:
                self._remember(face.identity.identity_id, result.stream_id, result.event_id)
        self.events(output.frame.stream_id, output.events, output.thumbnails)

    def events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        """Track events of one stream, each after the best shot (``thumbnails``: track id ->
        JPEG) it refers to on the thumbnails topic, if it does."""
        for event in events:
            if isinstance(event, TrackEnded) and event.track_id in thumbnails:
                self._best_shot(stream_id, event, thumbnails[event.track_id])
            if isinstance(event, TrackEnded) and self.config.embeddings_topic:
                embeddings = TrackEmbeddings.of(event, thumbnails.get(event.track_id))
                if embeddings is not None:  # biometrics on their own topic, before the event itself
                    self.send(self.config.embeddings_topic, stream_id, embeddings.encode(),
                              result_headers(embeddings))
            self.publish(self.config.tracks_topic, event)
            if event.identity is not None:
                self._remember(event.identity.identity_id, event.stream_id, event.event_id)
            if isinstance(event, TrackIdentified):
                self.publish(self.config.alerts_topic, event)

    def _best_shot(self, stream_id: str, event: TrackEnded, jpeg: bytes) -> None:
        topic = self.config.thumbnails_topic
        reference = event.summary.best_shot.thumbnail
        if topic and reference == thumbnail_reference(topic, stream_id, event.track_id):
            self.send(topic, thumbnail_key(stream_id, event.track_id), jpeg, thumbnail_headers(stream_id, event.track_id))

    def retract(self, identity_id: str, publisher_id: str) -> int:
        """Publish, per stream, a retraction of the events that carried an erased identity;
        returns how many streams had some."""
        streams = self.ledger.pop(identity_id, {})
        for stream_id, event_ids in sorted(streams.items()):
            message = Retraction(event_id=f"{stream_id}:retraction:{identity_id}:{publisher_id}", stream_id=stream_id,
                                 identity_id=identity_id, retracted_event_ids=tuple(event_ids),
                                 retracted_utc=utc_now())
            for topic in (self.config.detections_topic, self.config.tracks_topic, self.config.alerts_topic):
                self.publish(topic, message)
        return len(streams)

    def flush(self) -> bool:
        """Wait for every message sent so far; False if any could not be delivered."""
        self.producer.flush(timeout=self.config.delivery_timeout_ms / 1000)
        failed = [f for f in self.futures if f.failed()]
        unfinished = [f for f in self.futures if not f.is_done]
        self.futures = []
        if failed or unfinished:
            reason = failed[0].exception if failed else "delivery timed out"
            log.error("%d messages were not delivered (%s)", len(failed) + len(unfinished), reason)
            return False
        return True


class KafkaSink:
    """``facestream run --kafka-out``: a stream worker's results on the Kafka result topics.

    Messages are acknowledged by every in-sync replica (acks=all); the sink waits for them
    at the end of each stream and when it is closed, and reports what could not be
    delivered. (File and camera sources have no offsets to commit: for at-least-once
    delivery from cameras, publish the frames with ``facestream produce`` and process
    them with ``facestream consume``.)"""

    def __init__(self, config: KafkaConfig) -> None:
        self.publisher = KafkaPublisher(make_producer(config), config)
        self.undelivered = False

    def write(self, output: FrameOutput) -> None:
        self.publisher.frame(output)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        self.publisher.events(stream_id, events, thumbnails)
        self.undelivered |= not self.publisher.flush()

    def close(self) -> None:
        self.undelivered |= not self.publisher.flush()
        self.publisher.producer.close()
