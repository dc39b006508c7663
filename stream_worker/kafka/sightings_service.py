"""``facestream sightings serve``: the embeddings topic into the sightings store.

A consumer group (``kafka.sightings_group_id``) reads ``faces.embeddings``, where workers
publish each ended track's embeddings and best shot (:class:`TrackEmbeddings`, keyed by
stream id). Each record goes through :class:`~stream_worker.sightings_feed.SightingsFeed`;
offsets are committed only after every record polled is stored (durably: SQLite with
``synchronous = FULL``) or counted. At least once in, exactly one sighting per track out:
a record replayed after a crash has its ``track_ended`` event id, and the store keeps one
sighting per id.

It also reads the gallery changelog (``kafka.gallery_topic``): an erasure published with
``--with-sightings`` erases that identity's sightings here too, and sightings named after it
that arrive later are never stored; enrolling the id again lifts that.

Faults: a record that cannot be a sighting (not JSON, wrong schema, bad vectors) is the
input's fault: it goes to the dead-letter topic and is counted. A store that cannot be
written is the system's fault: nothing is committed past it, and the service stops (exit
status 2) for its supervisor to restart it, which replays from the last commit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from stream_worker.config import KafkaConfig
from stream_worker.kafka.changelog import ERASURE_PREFIX, ERASURE_SCHEMA
from stream_worker.kafka.client import KafkaUnavailableError, make_consumer, make_producer
from stream_worker.kafka.wire import dead_letter_headers
from stream_worker.messages.results import TrackEmbeddings
from stream_worker.sightings_feed import BadTrackMessageError, SightingsFeed

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


class SightingsService:
    def __init__(self, config: KafkaConfig, feed: SightingsFeed, *, idle_exit_ms: int = 0,
                 retention_days: int = 0) -> None:
        if not config.embeddings_topic:
            raise ValueError("kafka.embeddings_topic is empty: there is nothing to read sightings from")
        self.config = config
        self.feed = feed
        self.idle_exit_ms = idle_exit_ms
        self.retention_days = retention_days
        self.expired_days = 0
        self.dead_letters = 0
        self.erased = 0
        self.last_loop: float | None = None
        self.worker_id = f"sightings-{socket.gethostname()}-{os.getpid()}"

    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Consume until ``stop`` is set (or, with ``idle_exit_ms``, until nothing arrived for
        that long); returns the counts. A broker fault is :class:`KafkaUnavailableError`
        (nothing is committed past the last stored record)."""
        from kafka.errors import KafkaError

        try:
            return self._run(stop or threading.Event())
        except KafkaError as exc:
            raise KafkaUnavailableError(f"the sightings service lost the broker ({type(exc).__name__}: {exc}); "
                                        "nothing past the last stored sighting was committed") from None

    def _run(self, stop: threading.Event) -> dict[str, Any]:
        consumer = make_consumer(self.config, group=True, group_id=self.config.sightings_group_id)
        producer = None
        try:
            consumer.subscribe([t for t in (self.config.embeddings_topic, self.config.gallery_topic) if t])
            last_record = time.monotonic()
            next_clean = 0.0
            while not stop.is_set():
                self.last_loop = time.monotonic()
                if self.retention_days and time.monotonic() >= next_clean:  # at start, then hourly
                    removed = self.feed.store.expire(self.retention_days)
                    self.expired_days += len(removed)
                    if self.feed.metrics is not None:
                        self.feed.metrics.sightings_days_expired.inc(len(removed))
                    if removed:
                        log.warning("retention: deleted the sightings of %s", ", ".join(d.isoformat() for d in removed))
                    next_clean = time.monotonic() + RETENTION_EVERY_S
                polled = consumer.poll(timeout_ms=500)
                if not polled:
                    if not consumer.assignment():  # still joining the group: not idle yet
                        last_record = time.monotonic()
                    elif self.idle_exit_ms and (time.monotonic() - last_record) * 1000 > self.idle_exit_ms:
                        break
                    continue
                last_record = time.monotonic()
                sent = []
                for records in polled.values():
                    for record in records:
                        reason = self._offer(record)
                        if reason is not None:
                            producer = producer or make_producer(self.config)
                            sent.append(self._dead_letter(producer, record, reason))
                if sent:
                    producer.flush(timeout=self.config.delivery_timeout_ms / 1000)  # type: ignore[union-attr]
                    if not all(f.is_done and not f.failed() for f in sent):
                        raise KafkaUnavailableError("a dead letter was not acknowledged; nothing past it is committed")
                consumer.commit()  # everything polled is stored, counted or dead-lettered
        finally:
            consumer.close(autocommit=False)
            if producer is not None:
                producer.close()
        return {**asdict(self.feed.counts), "dead_letters": self.dead_letters, "days_expired": self.expired_days,
                "sightings_erased": self.erased}

    def health(self) -> dict[str, Any]:
        """``starting`` before the first poll, ``ok`` while the loop turns, ``stalled`` when it
        has not turned for a poll interval (the metrics server answers 503 but for ``ok``)."""
        if self.last_loop is None:
            return {"status": "starting"}
        since = time.monotonic() - self.last_loop
        return {"status": "ok" if since * 1000 < self.config.max_poll_interval_ms else "stalled",
                "seconds_since_poll": round(since, 1), **asdict(self.feed.counts)}

    def _changelog(self, record: Any) -> None:
        """The gallery changelog: an erasure with sightings erases them (and refuses later
        sightings named so); an enrolment under that id again lifts the refusal."""
        key = (record.key or b"").decode(errors="replace")
        if key.startswith(ERASURE_PREFIX) and record.value is not None:
            try:
                event = json.loads(record.value)
            except ValueError:
                log.warning("gallery changelog %s@%d: not JSON; ignored", key, record.offset)
                return
            if event.get("schema") == ERASURE_SCHEMA and event.get("with_sightings") is True:
                identity_id = str(event.get("identity_id", ""))
                removed = self.feed.store.erase_identity(identity_id, remember=True)
                self.feed.store.audit("gallery-changelog", "erase", removed, detail=identity_id)
                self.erased += removed
                if self.feed.metrics is not None:
                    self.feed.metrics.sightings_erased.inc(removed)
                log.warning("erased %d sightings of %s (gallery changelog)", removed, identity_id)
        elif record.value is not None and not key.startswith(ERASURE_PREFIX):
            self.feed.store.forget_erasure(key)

    def _offer(self, record: Any) -> str | None:
        """Store one record; the reason if it is the input's fault."""
        if record.topic == self.config.gallery_topic:
            self._changelog(record)
            return None
        if record.value is None:
            return "no payload"
        try:
            message = TrackEmbeddings.model_validate_json(record.value)
        except ValidationError as exc:
            self.feed.counts.invalid += 1
            return f"not a facestream.track-embeddings/2 message: {exc.errors()[0]['msg'] if exc.errors() else exc}"
        if record.key is not None and record.key.decode(errors="replace") != message.stream_id:
            self.feed.counts.invalid += 1
            return f"the key {record.key[:80]!r} is not the stream id {message.stream_id!r}"
        try:
            self.feed.offer(message)
        except BadTrackMessageError as exc:
            return str(exc)
        return None

    def _dead_letter(self, producer: Any, record: Any, reason: str) -> Any:
        headers = dead_letter_headers(record.headers, "payload", reason, record.topic, record.partition, record.offset,
                                      self.worker_id)
        value = (record.value or b"")[: self.config.max_message_bytes]
        future = producer.send(self.config.dead_letter_topic, key=record.key, value=value, headers=headers)
        self.dead_letters += 1
        if self.feed.metrics is not None:
            self.feed.metrics.dead_letters.labels("payload").inc()
        log.warning("dead letter: %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        return future
