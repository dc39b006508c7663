"""Kafka settings and the kafka-python clients built from them (one place for both).

The SASL password comes only from the environment (``FACESTREAM__KAFKA__SASL_PASSWORD``)
and is never printed: ``--print-config`` and the logs show it masked.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engines.errors import FaceStreamError
from stream_worker.config import KafkaConfig

log = logging.getLogger(__name__)

class KafkaUnavailableError(FaceStreamError):
    """The brokers cannot be reached (retriable)."""

    retriable = True


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """kafka-python settings every client shares (brokers, client id, timeouts, SASL)."""
    settings: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in config.bootstrap_servers.split(",") if s.strip()],
        "client_id": config.client_name, "request_timeout_ms": config.request_timeout_ms,
        "security_protocol": config.security_protocol, "reconnect_backoff_max_ms": 2000,
    }
    if config.sasl_mechanism:
        settings |= {"sasl_mechanism": config.sasl_mechanism, "sasl_plain_username": config.sasl_username,
                     "sasl_plain_password": config.sasl_password.get_secret_value()}
    return settings


def make_producer(config: KafkaConfig) -> Any:
    """A producer that waits for every in-sync replica (acks=all) and retries until
    ``delivery_timeout_ms``. Idempotent by default (``kafka.idempotent_producer``): the
    broker drops a batch the producer resends after a lost acknowledgement, and order holds
    with several requests in flight; without it, one request at a time keeps the order."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    ordering: dict[str, Any] = (
        {"enable_idempotence": True, "max_in_flight_requests_per_connection": 5} if config.idempotent_producer
        else {"enable_idempotence": False, "max_in_flight_requests_per_connection": 1})
    try:
        return KafkaProducer(
            **client_settings(config), acks="all", linger_ms=5, max_request_size=config.max_message_bytes + 65536,
            delivery_timeout_ms=config.delivery_timeout_ms, retries=2**31 - 1, max_block_ms=config.delivery_timeout_ms,
            **ordering,
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}: {exc}") from None


def make_consumer(config: KafkaConfig, *, group: bool, **extra: Any) -> Any:
    """A consumer in the worker group (manual commits) or, without ``group``, a standalone
    reader (assign and seek)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    settings = {
        **client_settings(config), "enable_auto_commit": False, "auto_offset_reset": "earliest",
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
        admin = KafkaAdminClient(**client_settings(config))
    except KafkaError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        compact = {"cleanup.policy": "compact"}
        wanted = [
            NewTopic(config.frames_topic, config.frames_partitions, config.replication_factor),
            *(NewTopic(t, config.frames_partitions, config.replication_factor)
              for t in (config.detections_topic, config.tracks_topic, config.alerts_topic, config.dead_letter_topic,
                        config.thumbnails_topic, config.embeddings_topic) if t),
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
