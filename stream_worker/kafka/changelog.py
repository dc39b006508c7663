"""The gallery changelog: enrolments and erasures on a compacted Kafka topic.

Every worker keeps a local gallery that replays the topic at start-up and follows it
live, so all workers converge on the same identities without a shared file system.

Records (key = identity id, JSON values):

- ``facestream.gallery-identity/1``: the identity's whole current state (name, metadata,
  every template with its model, embedding and image hash). Applying it is idempotent:
  templates whose image hash the local gallery has are skipped.
- a tombstone (null value): the identity is erased; compaction then removes its
  biometric data from the topic too.
- ``facestream.gallery-erasure/1`` under key ``erasure/<identity id>``: the erasure
  event (no biometric data), which tells workers to retract what they published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from gallery.gallery import Gallery
from gallery.store import utc_now
from stream_worker.config import KafkaConfig
from stream_worker.kafka.client import KafkaUnavailableError, TopicReader

log = logging.getLogger(__name__)

IDENTITY_SCHEMA = "facestream.gallery-identity/1"
ERASURE_SCHEMA = "facestream.gallery-erasure/1"
ERASURE_PREFIX = "erasure/"


def identity_record(gallery: Gallery, identity_id: str) -> dict[str, Any]:
    """An identity's current state, as published on the changelog."""
    identity = gallery.identity(identity_id)
    templates = [
        {
            "model": t.model,
            "embedding": base64.b64encode(np.ascontiguousarray(t.embedding, "<f4").tobytes()).decode(),
            "image_sha256": t.image_sha256 or hashlib.sha256(np.ascontiguousarray(t.embedding, "<f4").tobytes()).hexdigest(),
            "quality": t.quality,
        }
        for t in gallery.store.iter_templates() if t.identity_id == identity_id
    ]
    return {"schema": IDENTITY_SCHEMA, "identity": {"id": identity.id, "name": identity.name,
                                                   "metadata": identity.metadata}, "templates": templates}


class ChangelogNotAcknowledgedError(KafkaUnavailableError):
    """The brokers did not acknowledge a changelog record: the workers may not have it."""


def send_acknowledged(producer: Any, topic: str, records: list[tuple[str, bytes | None]], what: str,
                      timeout_s: float, where: str = "") -> None:
    """Send keyed records and wait until the brokers acknowledge every one (acks=all), or
    raise :class:`ChangelogNotAcknowledgedError` naming ``what`` and ``where`` (the topic)."""
    from kafka.errors import KafkaError

    futures = [producer.send(topic, key=key.encode(), value=value) for key, value in records]
    try:
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=0)  # raises the delivery error, or a timeout for one still in flight
    except KafkaError as exc:
        raise ChangelogNotAcknowledgedError(
            f"{what} was not acknowledged by {where or topic} within {timeout_s:g} s ({type(exc).__name__}: {exc})"
        ) from None


class GalleryPublisher:
    """Publishes a gallery's enrolments and erasures, and waits until the brokers have
    acknowledged each (acks=all); a record that is not acknowledged raises
    :class:`ChangelogNotAcknowledgedError`, never passes for published."""

    def __init__(self, producer: Any, topic: str, *, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    def _send(self, records: list[tuple[str, bytes | None]], what: str) -> None:
        send_acknowledged(self.producer, self.topic, records, what, self.timeout_s, f"the changelog {self.topic}")

    def publish_identity(self, gallery: Gallery, identity_id: str) -> None:
        record = identity_record(gallery, identity_id)
        self._send([(identity_id, json.dumps(record).encode())], f"the enrolment of '{identity_id}'")

    def publish_erasure(self, identity_id: str, *, with_sightings: bool = False) -> None:
        """``with_sightings``: sightings services erase the identity's sightings too."""
        event = {"schema": ERASURE_SCHEMA, "identity_id": identity_id, "erased_utc": utc_now(),
                 "with_sightings": with_sightings}
        self._send([(identity_id, None), (f"{ERASURE_PREFIX}{identity_id}", json.dumps(event).encode())],
                   f"the erasure of '{identity_id}'")


def apply_identity(gallery: Gallery, record: dict[str, Any]) -> int:
    """Bring the local gallery up to a published identity; returns templates added."""
    if record.get("schema") != IDENTITY_SCHEMA:
        raise ValueError(f"not a {IDENTITY_SCHEMA} record")
    identity = record["identity"]
    ours = [t for t in record["templates"] if t["model"] == gallery.model]
    vectors = np.stack([np.frombuffer(base64.b64decode(t["embedding"]), "<f4") for t in ours]) if ours else None
    if vectors is None:
        gallery.store.upsert_identity(identity["id"], name=identity["name"], metadata=identity["metadata"])
        return 0
    added = gallery.enrol(identity["id"], vectors, name=identity["name"], metadata=identity["metadata"],
                          image_sha256=[t["image_sha256"] for t in ours], quality=[t["quality"] for t in ours],
                          refuse_near_duplicates=False)  # a replica copies decisions already made
    return len(added)


class GalleryFollower:
    """Replays the changelog into a local gallery and follows it (call :meth:`poll`)."""

    def __init__(self, config: KafkaConfig, gallery: Gallery, on_erasure: Callable[[str], None]) -> None:

        self.gallery = gallery
        self.on_erasure = on_erasure
        self.reader = TopicReader(config, config.gallery_topic)
        self.applied = 0

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Apply everything published so far; returns records applied."""
        return self._apply_all(self.reader.read_to_end(timeout_s))

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply what arrived since the last call; returns records applied."""
        return self._apply_all(self.reader.poll(timeout_ms))

    def _apply_all(self, records: list[Any]) -> int:
        applied = 0
        for record in records:
            try:
                self._apply(record.key.decode() if record.key else "", record.value)
                applied += 1
            except (ValueError, KeyError, TypeError) as exc:
                log.error("gallery changelog offset %d: skipped a malformed record: %s", record.offset, exc)
        self.applied += applied
        return applied

    def _apply(self, key: str, value: bytes | None) -> None:
        if not key:
            raise ValueError("record without a key")
        if key.startswith(ERASURE_PREFIX):
            if value is None:
                return
            event = json.loads(value)
            if event.get("schema") != ERASURE_SCHEMA:
                raise ValueError(f"not a {ERASURE_SCHEMA} record")
            self.on_erasure(event["identity_id"])
            return
        if value is None:
            if any(i.id == key for i in self.gallery.identities()):
                self.gallery.remove(key)
                log.info("gallery changelog: %s erased", key)
            return
        added = apply_identity(self.gallery, json.loads(value))
        log.info("gallery changelog: %s enrolled (%d new templates)", key, added)

    def close(self) -> None:
        self.reader.close()
