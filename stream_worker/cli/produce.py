"""``facestream produce``: a video file or camera into a frames topic."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from stream_worker.cli.files import readable_file
from stream_worker.cli.options import add_config_options, add_options, bounded
from stream_worker.cli.startup import parse_sources, stop_on_signals
from stream_worker.config import FaceStreamConfig
from stream_worker.kafka.wire import PRODUCE_FORMATS


def add_parsers(commands: Any) -> None:
    produce = commands.add_parser(
        "produce", help="publish a video file or camera into a frames topic",
        description="Decode a source (file, RTSP/HTTP, webcam:N, folder) and publish its frames as JPEG images or "
        "H.264 chunks (one closed group of pictures per message), keyed by stream id.",
    )
    produce.add_argument("--source", required=True, metavar="[ID=]URI")
    produce.add_argument("--format", choices=PRODUCE_FORMATS, default="jpeg", help="default %(default)s")
    produce.add_argument("--gop-frames", type=bounded(int, 1, 10_000, "--gop-frames"), default=25, help="h264: frames per message (default %(default)s)")
    produce.add_argument("--jpeg-quality", type=bounded(int, 1, 100, "--jpeg-quality"), default=90, help="default %(default)s")
    produce.add_argument("--realtime", action="store_true", help="pace a file at its frame rate, like a camera")
    add_options(produce, "bootstrap", "produce", "recovery")
    add_config_options(produce)
    produce.set_defaults(handler=run)


def video_fps(uri: str, default: float = 25.0) -> float:
    """A video's average frame rate from its header (``default`` when unknown)."""
    import av

    try:
        with av.open(uri, timeout=10) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.error.FFmpegError, OSError):
        return default
    return float(rate) if rate else default


def run(args: argparse.Namespace, settings: FaceStreamConfig) -> int:
    from tqdm import tqdm

    from stream_worker.kafka.client import ensure_topics, make_producer
    from stream_worker.kafka.produce import publish_frames
    from stream_worker.local.sources import open_source

    [(stream_id, uri)] = parse_sources([args.source])
    if settings.stream.recovery_reference is not None:
        readable_file(settings.stream.recovery_reference, "stream.recovery_reference (--recover-with)", max_bytes=1 << 50)
    config = settings.kafka
    ensure_topics(config)
    source = open_source(stream_id, uri, recovery_reference=settings.stream.recovery_reference)
    stop = stop_on_signals()
    producer = make_producer(config)
    fps = video_fps(uri)
    with tqdm(unit="frame", desc=f"publishing {stream_id}", disable=None, file=sys.stderr) as bar:
        seen = [0]

        def progress(stats: Any) -> None:
            bar.update(stats.frames - seen[0])
            seen[0] = stats.frames

        try:
            stats = publish_frames(producer, config.frames_topic, source.frames(stop), fmt=args.format, fps=fps,
                                   gop_frames=args.gop_frames, jpeg_quality=args.jpeg_quality, on_message=progress,
                                   stop=stop, realtime=args.realtime)
        finally:
            producer.close()
    print(json.dumps({"stream_id": stream_id, "topic": config.frames_topic, "format": args.format, "frames": stats.frames,
                      "messages": stats.messages, "bytes": stats.bytes}))
    return 0


