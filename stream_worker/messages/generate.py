"""The JSON Schema files in ``schemas/``, generated from the message models.

``python -m stream_worker.messages.generate`` rewrites them; ``--check`` exits 1 when a
committed file differs from what the models say (a test runs the same check).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import TypeAdapter

from stream_worker.messages.results import (
    EMBEDDINGS_SCHEMA,
    FRAME_INPUT_SCHEMA,
    FRAME_SCHEMA,
    RETRACTION_SCHEMA,
    SCHEMA_DIR,
    SIGHTING_ALERT_SCHEMA,
    TRACK_SCHEMA,
    FrameInputHeaders,
    FrameResult,
    Retraction,
    SightingAlert,
    TrackEmbeddings,
    TrackEvent,
)
from stream_worker.messages.state import CHECKPOINT_FORMAT, PartitionCheckpoint

SCHEMAS: dict[str, tuple[str, Any, str]] = {
    "frame.v2": (FRAME_SCHEMA, FrameResult, "frame result"),
    "track.v3": (TRACK_SCHEMA, TrackEvent, "track event"),
    "retraction.v1": (RETRACTION_SCHEMA, Retraction, "retraction"),
    "sighting-alert.v1": (SIGHTING_ALERT_SCHEMA, SightingAlert, "sighting alert (re-scan on enrolment)"),
    "track-embeddings.v2": (EMBEDDINGS_SCHEMA, TrackEmbeddings, "an ended track's embeddings (biometric)"),
    "frame-input.v1": (FRAME_INPUT_SCHEMA, FrameInputHeaders, "frames-topic message headers"),
    "partition-checkpoint.v1": (CHECKPOINT_FORMAT, PartitionCheckpoint, "partition checkpoint (state topic)"),
}
"""File stem -> (schema id, model or union, what it is)."""


def generate(stem: str) -> dict[str, Any]:
    schema_id, model, what = SCHEMAS[stem]
    body = TypeAdapter(model).json_schema(by_alias=True, mode="serialization")
    body.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://facestream.dev/schemas/{stem}.schema.json",
        "title": f"FaceStream {what} ({schema_id})",
        **body,
    }


def render(stem: str) -> str:
    return json.dumps(generate(stem), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report files that differ instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for stem in SCHEMAS:
        path = SCHEMA_DIR / f"{stem}.schema.json"
        text = render(stem)
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python -m stream_worker.messages.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
