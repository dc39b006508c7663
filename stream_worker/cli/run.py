"""``facestream run``: the stream worker over files, live streams, webcams and folders."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from stream_worker.cli.files import readable_file, writable_dir, writable_file
from stream_worker.cli.options import add_config_options, add_options, given
from stream_worker.cli.startup import parse_sources, stop_on_signals
from stream_worker.config import FaceStreamConfig

log = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="process video streams: detect, analyse, track, identify",
        description="Process video files, RTSP/HTTP streams, webcams (webcam:N) or folders of images. Writes one "
        "JSON object per frame and per track event; optionally an annotated video and best-shot thumbnails.",
    )
    run.add_argument("--source", action="append", required=True, metavar="[ID=]URI",
                     help="a stream (repeatable); ID names it in the output (default: the file name)")
    run.add_argument("--out", type=Path, help="JSON lines file (default: standard output)")
    run.add_argument("--video-out", type=Path, help="annotated video (one file per stream when several)")
    run.add_argument("--thumbnails", type=Path, help="folder for each track's best shot")
    run.add_argument("--sightings", type=Path, metavar="DIR",
                     help="store every ended track in this sightings store (made if missing; `facestream sightings`)")
    run.add_argument("--recorded-at", action="append", default=[], metavar="ID=TIME",
                     help="a recorded file's start (ISO 8601 with a zone): its sightings are placed at TIME + pts "
                     "(default: when each frame was processed)")
    run.add_argument("--watch-list-only", action="store_true",
                     help="with --sightings: store only tracks named as an enrolled person")
    run.add_argument("--control-file", type=Path, help="add/remove streams while running: lines 'add ID URI', 'remove ID'")
    add_options(run, "gallery", "kafka-out", "metrics", "runtime", "models", "recovery")
    add_config_options(run)
    run.set_defaults(handler=run_worker)


def _recorded_at(specs: list[str], stream_ids: set[str]) -> dict[str, datetime]:
    from stream_worker.cli.sightings import parse_utc

    out = {}
    for spec in specs:
        stream_id, sep, text = spec.partition("=")
        if not sep or stream_id not in stream_ids:
            raise ConfigError(f"--recorded-at {spec!r}: give ID=TIME for one of the streams ({', '.join(sorted(stream_ids))})")
        out[stream_id] = parse_utc(text, f"--recorded-at {stream_id}")
    return out


def known_frames(uri: str) -> int | None:
    """Frame count of a video file, when its header says (for the progress bar)."""
    import av

    if "://" in uri or not Path(uri).is_file():
        return None
    try:
        with av.open(uri) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except av.error.FFmpegError:
        return None
    return int(frames) or None


def run_worker(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    sources = parse_sources(args.source)
    # outputs are checked before the models load: a missing or read-only folder is a clear error now
    if args.out is not None:
        writable_file(args.out, "--out")
    if args.video_out is not None:
        writable_file(args.video_out, "--video-out")
    if args.thumbnails is not None:
        writable_dir(args.thumbnails, "--thumbnails", create=True)
    recorded_at = _recorded_at(args.recorded_at, {sid for sid, _ in sources})
    if args.sightings is not None:
        writable_dir(args.sightings, "--sightings", create=True)
    elif args.watch_list_only or recorded_at:
        raise ConfigError("--watch-list-only and --recorded-at need --sightings")
    if config.stream.recovery_reference is not None:
        readable_file(config.stream.recovery_reference, "stream.recovery_reference (--recover-with)", max_bytes=1 << 50)
    from tqdm import tqdm

    from engines.runtime.engine import EngineRuntime
    from stream_worker.cli.startup import build_pipeline
    from stream_worker.local.sinks import JsonLinesSink, Sink, ThumbnailSink, VideoSink
    from stream_worker.local.worker import Worker
    from stream_worker.metrics import WorkerMetrics, serve

    stop = stop_on_signals()
    with EngineRuntime(config.runtime) as runtime:
        thumbnails = ThumbnailSink(args.thumbnails) if args.thumbnails else None
        pipeline, gallery = build_pipeline(config, runtime, gallery_path=config.gallery.path,
                                           create_gallery=False, thumbnails=thumbnails,
                                           thumbnails_topic=config.kafka.thumbnails_topic if given(args, "--kafka-out") else "")
        sinks: list[Sink] = [JsonLinesSink(args.out)]
        if thumbnails is not None:
            sinks.append(thumbnails)
        if args.video_out:
            sinks.append(VideoSink(args.video_out, several_streams=len(sources) > 1))
        kafka = None
        if given(args, "--kafka-out"):
            from stream_worker.kafka.client import ensure_topics
            from stream_worker.kafka.publish import KafkaSink

            if config.kafka.create_topics:
                ensure_topics(config.kafka)
            kafka = KafkaSink(config.kafka)
            sinks.append(kafka)
        metrics = WorkerMetrics()
        store = None
        if args.sightings is not None:
            from gallery.sightings import SightingsStore
            from stream_worker.local.sightings_sink import SightingsSink

            store = SightingsStore(args.sightings, visit_gap_s=config.sightings.visit_gap_s)
            if config.sightings.retention_days:
                metrics.sightings_days_expired.inc(len(store.expire(config.sightings.retention_days)))
            sightings = SightingsSink(store, min_frames=config.sightings.min_frames,
                                      min_quality=config.sightings.min_quality,
                                       recorded_at=recorded_at, watch_list_only=args.watch_list_only, metrics=metrics)
            sinks.append(sightings)
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
        if store is not None:
            store.close()
    report = summary.to_json()
    report["engine"] = runtime.describe()
    if store is not None:  # tracks stored, replayed, and left out (too short, too poor, not on the watch list)
        report["sightings"] = dataclasses.asdict(sightings.counts)
    print(json.dumps({"summary": report}), file=sys.stderr)
    if summary.stopped_by is not None:
        print(f"facestream: error: the run stopped early: {summary.stopped_by}", file=sys.stderr)
        return 2
    if stop.signal == signal.SIGINT:  # the output is complete up to here: every track ended
        print("facestream: interrupted", file=sys.stderr)
        return 130
    failed = [sid for sid, s in summary.streams.items() if s["error"] or s["frames_failed"]]
    if kafka is not None and kafka.undelivered:
        print("facestream: error: some results could not be delivered to Kafka (see the log)", file=sys.stderr)
        return 1
    return 1 if failed else 0
