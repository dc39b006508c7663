"""The per-frame pipeline: detect, align and analyse, track, identify.

Contract: :meth:`FacePipeline.process` takes at most one :class:`Frame` per stream (each
after its stream's previous frame) and returns one :class:`FrameOutput` per frame: the
typed :class:`~stream_worker.messages.FrameResult` and the track events it caused. All
state is per stream (tracker, track states, schedules) and is created on a stream's first
frame, snapshotted by :meth:`FacePipeline.stream_checkpoint`, restored by
:meth:`FacePipeline.restore_stream` and dropped by :meth:`FacePipeline.end_stream`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput
    from stream_worker.pipeline.frames import Frame

_EXPORTS = {
    "FacePipeline": "stream_worker.pipeline.face_pipeline",
    "FrameOutput": "stream_worker.pipeline.face_pipeline",
    "Frame": "stream_worker.pipeline.frames",
}
"""Public name -> the module that defines it, imported on first use (the frame type and the
stream-id rule without the models)."""

__all__ = ["FacePipeline", "Frame", "FrameOutput"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
