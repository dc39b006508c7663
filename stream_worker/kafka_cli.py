"""``facestream consume`` (the Kafka worker), ``produce`` (video into a frames topic) and
``tail`` (read and validate a result topic)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from engines.errors import ConfigError, InvalidImageError
from engines.image import decode_image
from engines.model_store import ModelStore
from engines.runtime import EngineRuntime
from stream_worker.config import as_dict, load_config
from stream_worker.gallery_cli import BOOTSTRAP_ENV
from stream_worker.kafka_client import (
    KafkaConfig,
    ensure_topics,
    make_consumer,
    make_producer,
)
from stream_worker.kafka_produce import FORMATS, publish_frames
from stream_worker.kafka_wire import CONTENT_TYPE, SCHEMA, header_dict
from stream_worker.kafka_worker import KafkaWorker, KafkaWorkerOptions
from stream_worker.messages import schema_for
from stream_worker.metrics import WorkerMetrics, serve
from stream_worker.run import build_pipeline, parse_sources, stop_on_signals
from stream_worker.sinks import Sink, ThumbnailSink
from stream_worker.sources import open_source

log = logging.getLogger(__name__)


def add_kafka_parsers(commands: Any, add_store_options: Callable[[argparse.ArgumentParser], None]) -> None:
    consume = commands.add_parser(
        "consume", help="the Kafka worker: frames topic in, result topics out (at least once)",
        description="Join the worker group on the frames topic, process every frame and publish results to "
        "faces.detections, faces.tracks and faces.alerts. Topic names and client settings: the 'kafka' section of "
        "the configuration (see README, 'Kafka').",
    )
    consume.add_argument("--bootstrap", metavar="HOST:PORT", help=f"brokers (env {BOOTSTRAP_ENV})")
    consume.add_argument("--topic", help="frames topic (default faces.frames)")
    consume.add_argument("--group", help="consumer group (default facestream)")
    consume.add_argument("--gallery", type=Path,
                         help="local gallery database; with the changelog on (default) it follows faces.gallery, "
                         "and a temporary one is used when none is named")
    consume.add_argument("--thumbnails", type=Path, help="folder for each track's best shot")
    consume.add_argument("--config", type=Path, help="YAML configuration")
    consume.add_argument("--metrics-port", type=int, help="serve /metrics and /health on this port")
    consume.add_argument("--idle-exit-ms", type=int, default=0, help="stop after this long without input (0: never)")
    consume.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    consume.add_argument("--no-auto-fetch", action="store_true", help="fail instead of fetching missing weights")
    add_store_options(consume)

    produce = commands.add_parser(
        "produce", help="publish a video file or camera into a frames topic",
        description="Decode a source (file, RTSP/HTTP, webcam:N, folder) and publish its frames as JPEG images or "
        "H.264 chunks (one closed group of pictures per message), keyed by stream id.",
    )
    produce.add_argument("--source", required=True, metavar="[ID=]URI")
    produce.add_argument("--topic", default="faces.frames", help="default %(default)s")
    produce.add_argument("--bootstrap", metavar="HOST:PORT", help=f"brokers (env {BOOTSTRAP_ENV})")
    produce.add_argument("--format", choices=FORMATS, default="jpeg", help="default %(default)s")
    produce.add_argument("--gop-frames", type=int, default=25, help="h264: frames per message (default %(default)s)")
    produce.add_argument("--jpeg-quality", type=int, default=90, help="default %(default)s")
    produce.add_argument("--realtime", action="store_true", help="pace a file at its frame rate, like a camera")

    tail = commands.add_parser(
        "tail", help="print a result topic's messages, validated against their schemas",
        description="Read a topic from the beginning (or only new messages with --follow-new) and print one JSON "
        "object per line; messages that fail their JSON Schema are reported on standard error.",
    )
    tail.add_argument("--topic", required=True)
    tail.add_argument("--bootstrap", metavar="HOST:PORT", help=f"brokers (env {BOOTSTRAP_ENV})")
    tail.add_argument("--new", action="store_true", help="only messages published from now on")
    tail.add_argument("--idle-exit-ms", type=int, default=0, help="stop after this long without messages (0: never)")
    tail.add_argument("--max-messages", type=int, default=0, help="stop after this many (0: no limit)")


def _bootstrap(args: argparse.Namespace) -> str:
    value = args.bootstrap or os.environ.get(BOOTSTRAP_ENV)
    if not value:
        raise ConfigError(f"name the brokers with --bootstrap HOST:PORT (or {BOOTSTRAP_ENV})")
    return str(value)


def run_consume(args: argparse.Namespace, overrides: Mapping[str, Any], store: ModelStore) -> int:
    overrides = dict(overrides)
    kafka: dict[str, Any] = {}
    if args.bootstrap or os.environ.get(BOOTSTRAP_ENV):  # else: the file, FACESTREAM__KAFKA__..., the default
        kafka["bootstrap_servers"] = _bootstrap(args)
    if args.topic:
        kafka["frames_topic"] = args.topic
    if args.group:
        kafka["group_id"] = args.group
    overrides["kafka"] = kafka
    config = load_config(args.config, overrides=overrides)
    if args.print_config:
        print(json.dumps(as_dict(config), indent=2))
        return 0
    stop = stop_on_signals()
    with EngineRuntime(config.runtime) as runtime, tempfile.TemporaryDirectory(prefix="facestream-gallery-") as tmp:
        thumbnails = ThumbnailSink(args.thumbnails) if args.thumbnails else None
        path = config.gallery.path or (Path(tmp) / "gallery.db" if config.kafka.gallery_topic else None)
        pipeline, gallery = build_pipeline(config, runtime, store, gallery_path=path, create_gallery=True,
                                           thumbnails=thumbnails, thumbnails_topic=config.kafka.thumbnails_topic)
        sinks: list[Sink] = [thumbnails] if thumbnails is not None else []
        metrics = WorkerMetrics()
        options = KafkaWorkerOptions(idle_exit_ms=args.idle_exit_ms, max_pixels=config.detector.max_image_pixels)
        worker = KafkaWorker(pipeline, config.kafka, options, gallery=gallery, metrics=metrics, sinks=sinks)
        server = None
        if config.metrics.port:
            server = serve(metrics, lambda: {**worker.health(), "engine": runtime.describe()},
                           config.metrics.host, config.metrics.port)
        try:
            stats = worker.run(stop)
        finally:
            if server is not None:
                server.shutdown()
            if gallery is not None:
                gallery.close()
    too_large = worker.publisher.too_large if worker.publisher is not None else 0
    print(json.dumps({"summary": {**stats.to_json(), "too_large": too_large, "dead_letter_reasons": dict(stats.reasons),
                                  "engine": runtime.describe()}}), file=sys.stderr)
    return 0


def video_fps(uri: str, default: float = 25.0) -> float:
    """A video's average frame rate from its header (``default`` when unknown)."""
    import av

    try:
        with av.open(uri, timeout=10) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.error.FFmpegError, OSError):
        return default
    return float(rate) if rate else default


def run_produce(args: argparse.Namespace) -> int:
    [(stream_id, uri)] = parse_sources([args.source])
    config = KafkaConfig(bootstrap_servers=_bootstrap(args), frames_topic=args.topic)
    ensure_topics(config)
    source = open_source(stream_id, uri)
    stop = stop_on_signals()
    producer = make_producer(config)
    fps = video_fps(uri)
    with tqdm(unit="frame", desc=f"publishing {stream_id}", disable=None, file=sys.stderr) as bar:
        seen = [0]

        def progress(stats: Any) -> None:
            bar.update(stats.frames - seen[0])
            seen[0] = stats.frames

        try:
            stats = publish_frames(producer, args.topic, source.frames(stop), fmt=args.format, fps=fps,
                                   gop_frames=args.gop_frames, jpeg_quality=args.jpeg_quality, on_message=progress,
                                   stop=stop, realtime=args.realtime)
        finally:
            producer.close()
    print(json.dumps({"stream_id": stream_id, "topic": args.topic, "format": args.format, "frames": stats.frames,
                      "messages": stats.messages, "bytes": stats.bytes}))
    return 0


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


def run_tail(args: argparse.Namespace) -> int:
    config = KafkaConfig(bootstrap_servers=_bootstrap(args))
    _, invalid = tail_topic(config, args.topic, sys.stdout, from_start=not args.new, idle_exit_ms=args.idle_exit_ms,
                            max_messages=args.max_messages, stop=stop_on_signals())
    return 1 if invalid else 0
