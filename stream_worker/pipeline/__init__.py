"""The per-frame pipeline: detect, align and analyse, track, identify.

Contract: :meth:`FacePipeline.process` takes at most one :class:`Frame` per stream (each
after its stream's previous frame) and returns one :class:`FrameOutput` per frame: the
typed :class:`~stream_worker.messages.FrameResult` and the track events it caused. All
state is per stream (tracker, track states, schedules) and is created on a stream's first
frame, snapshotted by :meth:`FacePipeline.stream_checkpoint`, restored by
:meth:`FacePipeline.restore_stream` and dropped by :meth:`FacePipeline.end_stream`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput
    from stream_worker.pipeline.frames import Frame

__all__ = [
    "FacePipeline",
    "Frame",
    "FrameOutput",
]

__getattr__ = lazy_exports(__name__, {
    "FacePipeline": "stream_worker.pipeline.face_pipeline",
    "Frame": "stream_worker.pipeline.frames",
    "FrameOutput": "stream_worker.pipeline.face_pipeline",
})
