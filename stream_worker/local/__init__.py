"""Local streams: sources, the file worker and local sinks (``facestream run``).

Contract: a :class:`~stream_worker.local.sources.Source` yields
:class:`~stream_worker.pipeline.frames.Frame` values from a file, a live URL, a webcam or
an image folder, reconnecting live sources by itself and playing an MP4 cut short before
its index from the frames it holds (:mod:`~stream_worker.local.recovery`); the
:class:`~stream_worker.local.worker.Worker` reads every stream into a bounded queue, runs
the pipeline on one frame per stream at a time and hands each
:class:`~stream_worker.pipeline.face_pipeline.FrameOutput` to its sinks in stream order.
A stream that fails is reported and removed; the others keep running.
"""
