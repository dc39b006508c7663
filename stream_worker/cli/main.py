"""The ``facestream`` command: the parser of every command, logging and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from engines.errors import FaceStreamError
from stream_worker.cli import analyze, consume, gallery, models, produce, run, serve_api, sightings, tail, train
from stream_worker.cli.options import load
from stream_worker.config import as_dict

log = logging.getLogger("facestream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream",
        description="FaceStream: face detection and analysis for images and video streams.",
    )
    parser.add_argument("--version", action="version", version=f"facestream {models.package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (analyze, gallery, serve_api, run, consume, produce, tail, sightings, train, models):
        module.add_parsers(commands)
    return parser


def configure_logging(verbosity: int, command: str) -> None:
    level = logging.WARNING
    if verbosity >= 2:
        level = logging.DEBUG
    elif verbosity == 1 or command == "models":
        level = logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("engines", "gallery", "stream_worker", "facestream"):
        logging.getLogger(name).setLevel(level)
    # Fetching weights (on first use too) is long work: always show its steps.
    for name in ("engines.store", "engines.convert"):
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.command)
    try:
        config = load(args)  # built once: defaults, file, environment, flags
        if getattr(args, "print_config", False):
            print(json.dumps(as_dict(config), indent=2))
            return 0
        return int(args.handler(args, config))
    except FaceStreamError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130
