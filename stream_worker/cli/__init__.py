"""The ``facestream`` command line: one module per command.

Contract: :func:`main` parses arguments, builds the configuration once
(:mod:`stream_worker.config`), runs one command and turns errors into exit codes: 0 on
success, 1 when some input could not be processed, 2 for configuration, model or
installation errors (the message says what to do), 130 when interrupted. Commands import
their heavy dependencies (models, Kafka, the REST server) only when they run.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from stream_worker.cli.main import main as run

    return run(argv)
