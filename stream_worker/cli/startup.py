"""Start-up shared by ``facestream run`` and ``facestream consume``: the configuration
from flags, the models, gallery and pipeline, and a stop event for SIGINT and SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import threading
from pathlib import Path

from engines.errors import ConfigError
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.network import MultiTaskNet
from engines.runtime.device import Device
from engines.runtime.engine import EngineRuntime
from engines.store.model_store import ModelStore
from gallery.gallery import Gallery
from stream_worker.cli.options import BOOTSTRAP_ENV, DEVICE_ENV
from stream_worker.config import WorkerConfig
from stream_worker.kafka.wire import thumbnail_reference
from stream_worker.local.sinks import ThumbnailSink
from stream_worker.pipeline.face_pipeline import FacePipeline, ThumbnailRef


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


def worker_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Configuration set by command-line flags (above the file, below the environment)."""
    overrides: dict[str, dict[str, object]] = {}
    device = getattr(args, "device", None) or os.environ.get(DEVICE_ENV)
    if device:
        overrides.setdefault("runtime", {})["device"] = device
    if getattr(args, "workers", None) is not None:
        overrides.setdefault("runtime", {})["workers"] = args.workers
    if args.gallery is not None:
        overrides.setdefault("gallery", {})["path"] = str(args.gallery)
    if args.metrics_port is not None:
        overrides.setdefault("metrics", {})["port"] = args.metrics_port
    if getattr(args, "kafka_out", None):
        overrides.setdefault("kafka", {})["bootstrap_servers"] = args.kafka_out
    return overrides




def bootstrap_servers(args: argparse.Namespace) -> str:
    value = args.bootstrap or os.environ.get(BOOTSTRAP_ENV)
    if not value:
        raise ConfigError(f"name the brokers with --bootstrap HOST:PORT (or {BOOTSTRAP_ENV})")
    return str(value)


