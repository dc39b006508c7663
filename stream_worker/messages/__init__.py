"""The typed messages the worker emits, and snapshots of pipeline state.

Contract: :class:`FrameResult` (one per processed frame) and :class:`TrackEvent`
(``track_started``, ``track_identified``, ``track_ended``) carry a schema id and a
deterministic event id, so consumers can drop duplicates after a replay; their JSON
Schemas live in ``schemas/`` (:func:`schema_for`). :mod:`stream_worker.messages.state`
packs arrays and bytes into JSON exactly (bit-identical round trips, no pickle).
"""

from stream_worker.messages.results import (
    FRAME_SCHEMA,
    RETRACTION_SCHEMA,
    TRACK_SCHEMA,
    FrameResult,
    IdentityRef,
    StreamGap,
    TrackEvent,
    schema_for,
)

__all__ = ["FRAME_SCHEMA", "RETRACTION_SCHEMA", "TRACK_SCHEMA", "FrameResult", "IdentityRef", "StreamGap", "TrackEvent",
           "schema_for"]
