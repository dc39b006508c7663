"""``facestream consume``: the Kafka worker."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from stream_worker.cli.files import writable_dir
from stream_worker.cli.options import add_config_options, add_options, bounded
from stream_worker.cli.startup import stop_on_signals
from stream_worker.config import FaceStreamConfig


def add_parsers(commands: Any) -> None:
    consume = commands.add_parser(
        "consume", help="the Kafka worker: frames topic in, result topics out (at least once)",
        description="Join the worker group on the frames topic, process every frame and publish results to "
        "faces.detections, faces.tracks and faces.alerts. Topic names and client settings: the 'kafka' section of "
        "the configuration (see README, 'Kafka').",
    )
    consume.add_argument("--thumbnails", type=Path, help="folder for each track's best shot")
    consume.add_argument("--idle-exit-ms", type=bounded(int, 0, 2**31, "--idle-exit-ms"), default=0,
                         help="stop after this long without input (0: never)")
    add_options(consume, "bootstrap", "consume", "gallery", "metrics", "runtime", "models")
    add_config_options(consume)
    consume.set_defaults(handler=run)


def run(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from engines.runtime.engine import EngineRuntime
    from stream_worker.cli.startup import build_pipeline
    from stream_worker.kafka.gallery_copy import GalleryCopy
    from stream_worker.kafka.worker import KafkaWorker, KafkaWorkerOptions
    from stream_worker.local.sinks import Sink, ThumbnailSink
    from stream_worker.metrics import WorkerMetrics, serve

    stop = stop_on_signals()
    with contextlib.ExitStack() as stack:
        path = config.gallery.path
        if path is None and config.kafka.gallery_topic:  # a copy replayed from the changelog
            path = stack.enter_context(GalleryCopy(config.gallery.copy_dir))
        runtime = stack.enter_context(EngineRuntime(config.runtime))
        thumbnails = ThumbnailSink(writable_dir(args.thumbnails, "--thumbnails", create=True)) if args.thumbnails else None
        pipeline, gallery = build_pipeline(config, runtime, gallery_path=path, create_gallery=True,
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


