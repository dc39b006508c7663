"""``facestream tail``: print a topic's messages, validated against their schemas."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stream_worker.cli.options import add_config_options, add_options, bounded
from stream_worker.cli.startup import stop_on_signals
from stream_worker.config import FaceStreamConfig


def add_parsers(commands: Any) -> None:
    tail = commands.add_parser(
        "tail", help="print a result topic's messages, validated against their schemas",
        description="Read a topic from the beginning (or only new messages with --new) and print one JSON "
        "object per line; messages that fail their JSON Schema are reported on standard error.",
    )
    tail.add_argument("--topic", required=True)
    tail.add_argument("--new", action="store_true", help="only messages published from now on")
    tail.add_argument("--idle-exit-ms", type=bounded(int, 0, 2**31, "--idle-exit-ms"), default=0,
                      help="stop after this long without messages (0: never)")
    tail.add_argument("--max-messages", type=bounded(int, 0, 2**62, "--max-messages"), default=0,
                      help="stop after this many (0: no limit)")
    add_options(tail, "bootstrap")
    add_config_options(tail)
    tail.set_defaults(handler=run)


def run(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from stream_worker.kafka.tail import tail_topic

    _, invalid = tail_topic(config.kafka, args.topic, sys.stdout, from_start=not args.new,
                            idle_exit_ms=args.idle_exit_ms, max_messages=args.max_messages, stop=stop_on_signals())
    return 1 if invalid else 0
