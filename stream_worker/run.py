"""``facestream run``: build the worker from the configuration and run it to the end."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import av
from tqdm import tqdm

from engines.device import Device
from engines.model_store import ModelStore
from engines.mtcnn import MTCNNDetector
from engines.multitask import MultiTaskNet
from engines.runtime import EngineRuntime
from gallery.gallery import Gallery
from stream_worker.config import WorkerConfig, as_dict, load_config
from stream_worker.kafka_wire import thumbnail_reference
from stream_worker.metrics import WorkerMetrics, serve
from stream_worker.pipeline import FacePipeline, ThumbnailRef
from stream_worker.sinks import JsonLinesSink, Sink, ThumbnailSink, VideoSink
from stream_worker.worker import Worker

log = logging.getLogger(__name__)


def parse_sources(specs: list[str]) -> list[tuple[str, str]]:
    """``[ID=]URI`` -> (stream id, uri); ids default to the file name, made unique."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, spec in enumerate(specs, 1):
        head, sep, tail = spec.partition("=")
        if sep and "://" not in head and "/" not in head and head:
            stream_id, uri = head, tail
        else:
            uri = spec
            local_name = Path(uri.split("?")[0].rstrip("/")).stem if "://" not in uri else ""
            stream_id = local_name or f"stream{n}"
        base, k = stream_id, 2
        while stream_id in seen:
            stream_id, k = f"{base}-{k}", k + 1
        seen.add(stream_id)
        out.append((stream_id, uri))
    return out


def known_frames(uri: str) -> int | None:
    """Frame count of a video file, when its header says (for the progress bar)."""
    if "://" in uri or not Path(uri).is_file():
        return None
    try:
        with av.open(uri) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except av.error.FFmpegError:
        return None
    return int(frames) or None


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set (finish cleanly: end tracks, flush, commit)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _no_reference(stream_id: str, track_id: int) -> None:
    return None


def build_pipeline(
    config: WorkerConfig, runtime: EngineRuntime, store: ModelStore, *, gallery_path: Path | None,
    create_gallery: bool, thumbnails: ThumbnailSink | None, thumbnails_topic: str = "",
) -> tuple[FacePipeline, Gallery | None]:
    """The models, the gallery (its index on the engine's device) and the pipeline. Track
    summaries refer to best shots in the ``thumbnails`` folder, else on ``thumbnails_topic``."""
    detector = MTCNNDetector.create(config.detector, runtime=runtime, store=store)
    multitask = MultiTaskNet.create(runtime=runtime, store=store)
    gallery = None
    if gallery_path is not None:
        index = dataclasses.replace(config.gallery.index, use_gpu=runtime.plan.device is Device.CUDA)
        gallery = Gallery(gallery_path, index=index, threshold=config.gallery.threshold, create=create_gallery)
    if thumbnails is not None:
        reference: ThumbnailRef = thumbnails.reference
    elif thumbnails_topic:
        reference = functools.partial(thumbnail_reference, thumbnails_topic)
    else:
        reference = _no_reference
    pipeline = FacePipeline(detector, multitask, gallery, config.pipeline, thumbnail_ref=reference)
    return pipeline, gallery


def run_worker(args: argparse.Namespace, overrides: Mapping[str, Any], store: ModelStore) -> int:
    config = load_config(args.config, overrides=overrides)
    if args.print_config:
        print(json.dumps(as_dict(config), indent=2))
        return 0
    sources = parse_sources(args.source)
    stop = stop_on_signals()
    with EngineRuntime(config.runtime) as runtime:
        thumbnails = ThumbnailSink(args.thumbnails) if args.thumbnails else None
        pipeline, gallery = build_pipeline(config, runtime, store, gallery_path=config.gallery.path,
                                           create_gallery=False, thumbnails=thumbnails,
                                           thumbnails_topic=config.kafka.thumbnails_topic if args.kafka_out else "")
        sinks: list[Sink] = [JsonLinesSink(args.out)]
        if thumbnails is not None:
            sinks.append(thumbnails)
        if args.video_out:
            sinks.append(VideoSink(args.video_out, several_streams=len(sources) > 1))
        kafka = None
        if args.kafka_out:
            from stream_worker.kafka_client import ensure_topics
            from stream_worker.kafka_publish import KafkaSink

            if config.kafka.create_topics:
                ensure_topics(config.kafka)
            kafka = KafkaSink(config.kafka)
            sinks.append(kafka)
        metrics = WorkerMetrics()
        worker = Worker(pipeline, sinks, config.stream, metrics=metrics)
        server = None
        if config.metrics.port:
            server = serve(metrics, lambda: {**worker.health(), "engine": runtime.describe()},
                           config.metrics.host, config.metrics.port)
        for stream_id, uri in sources:
            worker.add_stream(stream_id, uri)
        totals = [known_frames(uri) for _, uri in sources]
        total = sum(t for t in totals if t) if all(totals) else None
        with tqdm(total=total, unit="frame", desc="processing", disable=None, file=sys.stderr) as bar:
            summary = worker.run(control_file=args.control_file, progress=bar.update, stop=stop)
        if server is not None:
            server.shutdown()
        if gallery is not None:
            gallery.close()
    report = summary.to_json()
    report["engine"] = runtime.describe()
    print(json.dumps({"summary": report}), file=sys.stderr)
    failed = [sid for sid, s in summary.streams.items() if s["error"]]
    if kafka is not None and kafka.undelivered:
        print("facestream: error: some results could not be delivered to Kafka (see the log)", file=sys.stderr)
        return 1
    return 1 if failed else 0
