"""The per-frame pipeline: detect, align and analyse, track, identify.

Contract: :meth:`FacePipeline.process` takes at most one :class:`Frame` per stream (each
after its stream's previous frame) and returns one :class:`FrameOutput` per frame: the
typed :class:`~stream_worker.messages.FrameResult` and the track events it caused. All
state is per stream (tracker, track states, schedules) and is created on a stream's first
frame, snapshotted by :meth:`FacePipeline.stream_checkpoint`, restored by
:meth:`FacePipeline.restore_stream` and dropped by :meth:`FacePipeline.end_stream`.
"""

from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput, PipelineConfig
from stream_worker.pipeline.frames import Frame

__all__ = ["FacePipeline", "Frame", "FrameOutput", "PipelineConfig"]
