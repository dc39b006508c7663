"""Kafka settings and the kafka-python clients built from them (one place for both).

Credentials never live in the configuration (which ``--print-config`` shows and logs may
quote): a SASL password comes only from the ``FACESTREAM_KAFKA_PASSWORD`` environment
variable.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from engines.errors import ConfigError, FaceStreamError

log = logging.getLogger(__name__)

PASSWORD_ENV = "FACESTREAM_KAFKA_PASSWORD"


class KafkaUnavailableError(FaceStreamError):
    """The brokers cannot be reached (retriable)."""

    retriable = True


@dataclass(frozen=True, kw_only=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    """Comma-separated host:port list."""
    frames_topic: str = "faces.frames"
    detections_topic: str = "faces.detections"
    tracks_topic: str = "faces.tracks"
    alerts_topic: str = "faces.alerts"
    """Watch-list hits: every track identified as (or changed to) a gallery identity."""
    dead_letter_topic: str = "faces.dead-letter"
    thumbnails_topic: str = "faces.thumbnails"
    """Each ended track's best-shot JPEG, keyed ``<stream>:track:<id>``, which its summary's
    ``best_shot.thumbnail`` refers to as ``kafka:<topic>/<key>`` (unless the worker writes
    best shots to a --thumbnails folder); empty: off."""
    gallery_topic: str = "faces.gallery"
    """Compacted gallery changelog (enrolments, tombstones, erasure events); empty: off."""
    state_topic: str = "faces.worker-state"
    """Compacted per-partition checkpoints of tracker state (see stream_worker.kafka.worker)."""
    group_id: str = "facestream"
    client_id: str = ""
    """Defaults to facestream-<host>-<pid>."""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 60_000
    """A worker that takes longer than this between polls leaves the group; one poll's
    records (max_poll_records) must be processed well within it."""
    max_poll_records: int = 64
    max_poll_frames: int = 64
    """Frames taken per poll: fewer records when they are video chunks of many frames."""
    max_message_bytes: int = 1_000_000
    """Input messages above this size are dead letters (Apache Kafka's default message.max.bytes is
    about 1 MB: raise both together)."""
    request_timeout_ms: int = 30_000
    delivery_timeout_ms: int = 300_000
    """How long the producer retries a result through a broker outage before the worker
    rewinds to its last checkpoint and processes the frames again."""
    checkpoint_interval_ms: int = 1_000
    """How often results are flushed, offsets committed and pipeline state checkpointed:
    the most a take-over replays."""
    create_topics: bool = True
    """Create missing topics at start-up (compacted ones compacted)."""
    frames_partitions: int = 4
    """Partitions of the frames topic when the worker creates it."""
    replication_factor: int = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("kafka.bootstrap_servers is empty")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError("kafka: heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if min(self.max_poll_records, self.max_poll_frames, self.frames_partitions, self.checkpoint_interval_ms) < 1 \
                or self.max_message_bytes < 1024:
            raise ConfigError("kafka: max_poll_records, max_poll_frames, frames_partitions and checkpoint_interval_ms "
                              "must be >= 1, "
                              "max_message_bytes >= 1024")
        if self.request_timeout_ms > self.delivery_timeout_ms:
            raise ConfigError("kafka: request_timeout_ms must not exceed delivery_timeout_ms")

    @property
    def client_name(self) -> str:
        return self.client_id or f"facestream-{socket.gethostname()}-{os.getpid()}"

    def common(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_name, "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol, "reconnect_backoff_max_ms": 2000,
        }
        if self.sasl_mechanism:
            settings |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                         "sasl_plain_password": os.environ.get(PASSWORD_ENV, "")}
        return settings


def make_producer(config: KafkaConfig) -> Any:
    """A producer that waits for every in-sync replica (acks=all) and retries until
    ``delivery_timeout_ms``."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            **config.common(), acks="all", linger_ms=5, max_request_size=config.max_message_bytes + 65536,
            delivery_timeout_ms=config.delivery_timeout_ms, retries=2**31 - 1, max_in_flight_requests_per_connection=1,
            max_block_ms=config.delivery_timeout_ms,
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}: {exc}") from None


def make_consumer(config: KafkaConfig, *, group: bool, **extra: Any) -> Any:
    """A consumer in the worker group (manual commits) or, without ``group``, a standalone
    reader (assign and seek)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    settings = {
        **config.common(), "enable_auto_commit": False, "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": config.max_message_bytes + 65536,
        "fetch_max_bytes": max(52_428_800, config.max_message_bytes + 65536),
        "receive_message_max_bytes": max(104_857_600, 2 * config.max_message_bytes),
    }
    if group:
        settings |= {
            "group_id": config.group_id, "session_timeout_ms": config.session_timeout_ms,
            "heartbeat_interval_ms": config.heartbeat_interval_ms, "max_poll_interval_ms": config.max_poll_interval_ms,
            "max_poll_records": config.max_poll_records,
        }
    try:
        return KafkaConsumer(**(settings | extra))
    except KafkaError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}: {exc}") from None


def ensure_topics(config: KafkaConfig) -> None:
    """Create the worker's topics that do not exist yet (no-op for existing ones)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(**config.common())
    except KafkaError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        compact = {"cleanup.policy": "compact"}
        wanted = [
            NewTopic(config.frames_topic, config.frames_partitions, config.replication_factor),
            *(NewTopic(t, config.frames_partitions, config.replication_factor)
              for t in (config.detections_topic, config.tracks_topic, config.alerts_topic, config.dead_letter_topic,
                        config.thumbnails_topic) if t),
            NewTopic(config.state_topic, 1, config.replication_factor, topic_configs=compact),
        ]
        if config.gallery_topic:
            wanted.append(NewTopic(config.gallery_topic, 1, config.replication_factor, topic_configs=compact))
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                response = admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another worker was faster
                return
            results = response.get("topics", []) if isinstance(response, dict) else []
            failed = [t for t in results if t.get("error_code") not in (0, TopicAlreadyExistsError.errno)]
            if failed:
                raise KafkaUnavailableError("cannot create topics: " + "; ".join(
                    f"{t['name']}: {t.get('error_message') or 'error ' + str(t['error_code'])}" for t in failed))
            log.info("created topics %s", [t.name for t in missing])
    finally:
        admin.close()


class TopicReader:
    """Reads a whole topic from its beginning, outside any group (compacted topics: the
    gallery changelog, the checkpoints), then follows it."""

    def __init__(self, config: KafkaConfig, topic: str) -> None:
        from kafka import TopicPartition

        self.topic = topic
        self.consumer = make_consumer(config, group=False)
        partitions = self.consumer.partitions_for_topic(topic) or {0}
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)

    def poll(self, timeout_ms: int = 0) -> list[Any]:
        """The records that arrived since the last call (waiting up to ``timeout_ms``)."""
        return [r for records in self.consumer.poll(timeout_ms=timeout_ms).values() for r in records]

    def read_to_end(self, timeout_s: float) -> list[Any]:
        """Every record up to the topic's end as of now."""
        end = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        records: list[Any] = []
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: not read to its end after {timeout_s} s")
            records += self.poll(timeout_ms=500)
        return records

    def close(self) -> None:
        self.consumer.close()
