"""Reading a result topic and validating each message against its JSON Schema
(``facestream tail``)."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

from engines.errors import ConfigError, InvalidImageError
from engines.image import decode_image
from stream_worker.kafka.client import KafkaConfig, make_consumer
from stream_worker.kafka.wire import CONTENT_TYPE, SCHEMA, header_dict
from stream_worker.messages.results import schema_for


def tail_topic(config: KafkaConfig, topic: str, out: TextIO, *, from_start: bool = True, idle_exit_ms: int = 0,
               max_messages: int = 0, stop: threading.Event | None = None) -> tuple[int, int]:
    """Print a topic's messages as JSON lines, validating each against its schema; returns
    (messages, invalid)."""
    import time

    import jsonschema

    consumer = make_consumer(config, group=False, auto_offset_reset="earliest" if from_start else "latest")
    from kafka import TopicPartition

    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not partitions:
        consumer.close()
        raise ConfigError(f"topic {topic} does not exist on {config.bootstrap_servers}")
    consumer.assign(partitions)
    if from_start:
        consumer.seek_to_beginning(*partitions)
    else:
        consumer.seek_to_end(*partitions)
    count = invalid = 0
    idle_since = time.monotonic()
    validators: dict[str, Any] = {}
    try:
        while not (stop and stop.is_set()):
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                if idle_exit_ms and time.monotonic() - idle_since > idle_exit_ms / 1000:
                    break
                continue
            idle_since = time.monotonic()
            for records in batch.values():
                for record in records:
                    count += 1
                    if _is_image(record):  # the thumbnails topic: say what it is
                        problem, line = _check_image(record)
                    else:
                        problem, line = _validate(record, validators, jsonschema), None
                    if problem:
                        invalid += 1
                        print(f"facestream tail: {topic}[{record.partition}]@{record.offset}: {problem}", file=sys.stderr)
                    else:
                        out.write((line or record.value.decode()) + "\n")
                    if max_messages and count >= max_messages:
                        return count, invalid
            out.flush()
    finally:
        consumer.close()
    return count, invalid


def _is_image(record: Any) -> bool:
    return header_dict(record.headers).get(CONTENT_TYPE, "").startswith("image/")


def _check_image(record: Any) -> tuple[str | None, str | None]:
    """An image message (a best shot): (problem, None) or (None, a JSON line describing it)."""
    headers = header_dict(record.headers)
    try:
        image = decode_image(record.value or b"", name="message")
    except InvalidImageError as exc:
        return str(exc), None
    key = record.key.decode(errors="replace") if record.key else None
    return None, json.dumps({"key": key, "content_type": headers[CONTENT_TYPE], "bytes": len(record.value),
                             "width": image.shape[1], "height": image.shape[0],
                             "headers": {k: v for k, v in headers.items() if k.startswith("fs-")}})


def _validate(record: Any, validators: dict[str, Any], jsonschema: Any) -> str | None:
    if record.value is None:
        return "no value (a tombstone)"
    try:
        message = json.loads(record.value)
    except ValueError:
        return "not JSON"
    schema_id = message.get("schema") if isinstance(message, dict) else None
    if not isinstance(schema_id, str) or not schema_id.startswith("facestream."):
        return "no FaceStream schema id"
    if header_dict(record.headers).get(SCHEMA, schema_id) != schema_id:
        return f"header {SCHEMA} differs from the message's schema {schema_id}"
    if schema_id not in validators:
        try:
            schema = schema_for(schema_id)
        except FileNotFoundError:
            return f"unknown schema {schema_id}"
        validators[schema_id] = jsonschema.Draft202012Validator(schema)
    errors = sorted(validators[schema_id].iter_errors(message), key=lambda e: list(e.path))
    return f"fails {schema_id}: {errors[0].message}" if errors else None


