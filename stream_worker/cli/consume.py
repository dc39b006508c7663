"""``facestream consume``: the Kafka worker."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from engines.runtime.engine import EngineRuntime
from stream_worker.cli.options import BOOTSTRAP_ENV, add_store_options, model_store
from stream_worker.cli.startup import bootstrap_servers, build_pipeline, stop_on_signals, worker_overrides
from stream_worker.config import as_dict, load_config
from stream_worker.kafka.worker import KafkaWorker, KafkaWorkerOptions
from stream_worker.local.sinks import Sink, ThumbnailSink
from stream_worker.metrics import WorkerMetrics, serve


def add_parsers(commands: Any) -> None:
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
    consume.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    store = model_store(args)
    overrides = worker_overrides(args)
    kafka: dict[str, Any] = {}
    if args.bootstrap or os.environ.get(BOOTSTRAP_ENV):  # else: the file, FACESTREAM__KAFKA__..., the default
        kafka["bootstrap_servers"] = bootstrap_servers(args)
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


