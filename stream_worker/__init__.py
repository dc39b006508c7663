"""FaceStream stream worker: decoded frames in, typed results out.

Contract: ``stream_worker`` composes ``engines`` (detection, analysis) and ``gallery``
(identification) into a per-stream pipeline and owns everything around it. Packages, in
the order the data flows:

- ``stream_worker.local``: sources (files, RTSP/HTTP, webcams, image folders) that yield
  :class:`~stream_worker.pipeline.frames.Frame` values, the file worker that runs them,
  and local sinks (JSON lines, annotated video, thumbnails).
- ``stream_worker.pipeline``: detect, analyse, track, identify; per-stream state only.
- ``stream_worker.messages``: the typed output messages (frame results, track events)
  and pipeline state snapshots, with their JSON Schemas.
- ``stream_worker.kafka``: the only package that talks to Kafka: wire format, the
  consumer-group worker, publishing, the gallery changelog.
- ``stream_worker.cli``: the ``facestream`` command, one module per command.

``stream_worker.config`` builds the one configuration; ``stream_worker.metrics`` serves
Prometheus metrics and health.
"""
