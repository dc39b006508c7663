"""The worker: several streams, one pipeline, the sinks.

Each stream has a reader thread that decodes frames into a bounded queue. With ``all``
pacing (files) the reader waits when the queue is full, so every frame is processed; with
``realtime`` pacing (live sources) it drops the oldest queued frame instead, and the next
frame processed reports the gap. The main loop takes at most one frame per stream per
step (round robin), runs the pipeline on them together (detection crops and the
multi-task call batch across streams) and hands the results to the sinks in stream order.

A stream that fails (cannot be opened, not a video) is reported and removed; the others
keep running. Live streams reconnect by themselves (see :mod:`stream_worker.local.sources`).

Failures are decided by :func:`engines.errors.classify`: a frame the pipeline refuses as
bad input is skipped and counted (``frames_failed``); any other pipeline failure is
retried (a step is atomic, so a retry gives what a first try would) ``stream.retries``
times with backoff, then ends the run. An output that cannot be written (disk full, a
folder removed) also ends the run. Ending early still ends every track (``track_ended``
events to the sinks that still work) and reports the summary with the reason.

Streams can be added and removed while running through a control file: each new line
``add STREAM_ID URI`` or ``remove STREAM_ID`` is carried out within a second.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import FaceStreamError, Failure, PipelineFailedError, classify
from stream_worker.config import Pacing, StreamConfig
from stream_worker.local.sinks import Sink
from stream_worker.local.sources import Source, SourceUnavailableError, open_source
from stream_worker.messages.results import StreamGap
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput, stage_summary
from stream_worker.pipeline.frames import Frame, check_stream_id

log = logging.getLogger(__name__)


@dataclass
class StreamRunner:
    """A stream's reader thread and queue."""

    source: Source
    pacing: Pacing
    capacity: int
    queue: collections.deque[Frame] = field(default_factory=collections.deque)
    lock: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    error: str | None = None
    dropped_since: int = 0
    dropped: int = 0
    decoded: int = 0
    processed: int = 0
    failed: int = 0
    """Frames the pipeline refused as bad input (skipped)."""
    thread: threading.Thread | None = None

    @property
    def stream_id(self) -> str:
        return self.source.stream_id

    def read(self, metrics: WorkerMetrics | None) -> None:
        try:
            for frame in self.source.frames(self.stop):
                self.decoded += 1
                if metrics is not None:
                    metrics.frames_in.labels(self.stream_id).inc()
                    if frame.gap is not None:
                        metrics.frames_lost.labels(self.stream_id).inc(frame.gap.frames_lost)
                with self.lock:
                    while len(self.queue) >= self.capacity and not self.stop.is_set():
                        if self.pacing is Pacing.REALTIME:
                            self.queue.popleft()
                            self.dropped += 1
                            self.dropped_since += 1
                            if metrics is not None:
                                metrics.frames_dropped.labels(self.stream_id).inc()
                        else:
                            self.lock.wait(0.5)
                    self.queue.append(frame)
                    self.lock.notify_all()
        except FaceStreamError as exc:
            self.error = str(exc)
            log.error("stream %s stopped: %s", self.stream_id, exc)
        except Exception as exc:  # a decoder bug must not take the worker down
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("stream %s stopped by an unexpected error", self.stream_id)
        finally:
            if metrics is not None and self.source.corrupt_packets:
                metrics.corrupt_packets.labels(self.stream_id).inc(self.source.corrupt_packets)
            with self.lock:
                self.done = True
                self.lock.notify_all()

    def take(self) -> Frame | None:
        with self.lock:
            if not self.queue:
                return None
            frame = self.queue.popleft()
            self.lock.notify_all()
            if self.dropped_since:
                gap = StreamGap(frames_lost=self.dropped_since, seconds=0.0)
                frame = dataclasses.replace(frame, gap=gap if frame.gap is None else
                                            StreamGap(frames_lost=frame.gap.frames_lost + gap.frames_lost,
                                                      seconds=frame.gap.seconds))
                self.dropped_since = 0
            return frame

    @property
    def finished(self) -> bool:
        with self.lock:
            return self.done and not self.queue


@dataclass
class RunSummary:
    frames: int
    faces: int
    tracks: int
    identities: list[str]
    seconds: float
    stage_ms_per_frame: dict[str, float]
    streams: dict[str, dict[str, Any]]
    stopped_by: str | None = None
    """Why the run ended before its streams did (an output could not be written, the pipeline
    kept failing); None when it ran to the end or was stopped on purpose."""

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "faces": self.faces, "tracks": self.tracks, "identities": self.identities,
            "seconds": round(self.seconds, 2), "fps": round(self.frames / self.seconds, 2) if self.seconds else 0.0,
            "stage_ms_per_frame": self.stage_ms_per_frame, "streams": self.streams, "stopped_by": self.stopped_by,
        }


class OutputFailedError(FaceStreamError):
    """A sink could not write (the disk is full, its folder went away): the run ends."""


class Worker:
    def __init__(
        self,
        pipeline: FacePipeline,
        sinks: Sequence[Sink],
        config: StreamConfig | None = None,
        *,
        metrics: WorkerMetrics | None = None,
        source_factory: Callable[..., Source] = open_source,
    ) -> None:
        self.pipeline = pipeline
        self.sinks = list(sinks)
        self.config = config or StreamConfig()
        self.metrics = metrics
        self.source_factory = source_factory
        self.runners: dict[str, StreamRunner] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self._wake = threading.Event()
        self._tracks = 0
        self._identities: set[str] = set()
        self._stop = threading.Event()
        self._broken: set[int] = set()
        """Sinks (by id) that failed to write; the rest still get the end of every track."""

    # --- streams -------------------------------------------------------------------------

    def add_stream(self, stream_id: str, uri: str) -> None:
        check_stream_id(stream_id)
        if stream_id in self.runners:
            raise FaceStreamError(f"stream {stream_id} is already running")
        cfg = self.config
        source = self.source_factory(
            stream_id, uri, open_timeout_ms=cfg.open_timeout_ms, reconnect_min_ms=cfg.reconnect_min_ms,
            reconnect_max_ms=cfg.reconnect_max_ms, recovery_reference=cfg.recovery_reference,
        )
        pacing = cfg.pacing
        if pacing is Pacing.AUTO:
            pacing = Pacing.REALTIME if source.live else Pacing.ALL
        runner = StreamRunner(source, pacing, cfg.queue_frames)
        runner.thread = threading.Thread(target=runner.read, args=(self.metrics,), name=f"source-{stream_id}", daemon=True)
        self.runners[stream_id] = runner
        runner.thread.start()
        log.info("stream %s added (%s pacing)", stream_id, pacing.value)

    def remove_stream(self, stream_id: str) -> None:
        runner = self.runners.get(stream_id)
        if runner is None:
            log.warning("control: no stream %s to remove", stream_id)
            return
        runner.stop.set()
        with runner.lock:
            runner.queue.clear()
            runner.lock.notify_all()
        log.info("stream %s removed", stream_id)

    def _finish_stream(self, runner: StreamRunner, *, ending: bool = True) -> None:
        events, thumbnails = self.pipeline.end_stream(runner.stream_id)
        try:
            self._write(lambda sink: sink.write_events(runner.stream_id, events, thumbnails), ending=ending)
        finally:
            self._finished(runner)

    def _finished(self, runner: StreamRunner) -> None:
        self.finished[runner.stream_id] = {
            "frames_decoded": runner.decoded, "frames_processed": runner.processed, "frames_dropped": runner.dropped,
            "frames_failed": runner.failed, "corrupt_packets": runner.source.corrupt_packets, "error": runner.error,
        }
        del self.runners[runner.stream_id]
        if self.metrics is not None:
            self.metrics.queue_depth.labels(runner.stream_id).set(0)

    # --- main loop -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        failing = [r.stream_id for r in self.runners.values() if r.error]
        return {
            "status": "ok",
            "streams": {sid: {"queued": len(r.queue), "processed": r.processed, "dropped": r.dropped,
                              "error": r.error} for sid, r in list(self.runners.items())},
            "finished": self.finished,
            "failing": failing,
        }

    def run(self, *, control_file: Path | None = None, progress: Callable[[int], None] | None = None,
            stop: threading.Event | None = None) -> RunSummary:
        """Process until every stream has ended (or ``stop`` is set, or a failure that is not
        the input's fault ends the run: see :attr:`RunSummary.stopped_by`)."""
        stop = stop or threading.Event()
        self._stop = stop
        started = time.monotonic()
        control = _ControlFile(control_file) if control_file else None
        next_control = 0.0
        stopped_by = None
        try:
            while (self.runners or control is not None) and not stop.is_set():
                if control is not None and time.monotonic() >= next_control:
                    control.apply(self)
                    next_control = time.monotonic() + 1.0
                batch = [f for f in (r.take() for r in list(self.runners.values())) if f is not None]
                try:
                    if batch:
                        self._process(batch, progress)
                    for runner in [r for r in self.runners.values() if r.finished]:
                        self._finish_stream(runner, ending=False)
                except (PipelineFailedError, OutputFailedError) as exc:
                    stopped_by = str(exc)
                    log.error("stopping the run: %s", exc)
                    break
                if not batch:
                    time.sleep(0.005)
                if self.metrics is not None:
                    self.metrics.streams.set(len(self.runners))
                    for runner in self.runners.values():
                        self.metrics.queue_depth.labels(runner.stream_id).set(len(runner.queue))
        finally:
            for runner in list(self.runners.values()):
                runner.stop.set()
                with runner.lock:
                    runner.lock.notify_all()
            for runner in list(self.runners.values()):
                if runner.thread is not None:
                    runner.thread.join(timeout=5)
                self._finish_stream(runner)
            self._write(lambda sink: sink.close(), ending=True)
        times = self.pipeline.times
        return RunSummary(
            frames=times.frames, faces=times.faces, tracks=self._tracks, identities=sorted(self._identities),
            seconds=time.monotonic() - started, stage_ms_per_frame=stage_summary(times), streams=self.finished,
            stopped_by=stopped_by,
        )

    def _write(self, action: Callable[[Sink], None], *, ending: bool = False) -> None:
        """Apply ``action`` to every working sink. A sink that fails is left out from then on;
        while running that ends the run (:class:`OutputFailedError`), while ending the others
        still get the rest."""
        failed = None
        for sink in self.sinks:
            if id(sink) in self._broken:
                continue
            try:
                action(sink)
            except OSError as exc:
                self._broken.add(id(sink))
                failed = f"{type(sink).__name__} cannot write: {exc.strerror or exc} ({exc.filename or 'output'})"
                log.error("%s", failed)
        if failed is not None and not ending:
            raise OutputFailedError(failed)

    def _step(self, batch: list[Frame]) -> list[FrameOutput]:
        """The pipeline on one frame per stream. A frame that is the input's fault is skipped
        and counted; any other failure is retried with backoff (the step is atomic), then
        ends the run."""
        for attempt in range(self.config.retries + 1):
            try:
                return self.pipeline.process(batch)
            except Exception as exc:
                failure = classify(exc)
                if failure is Failure.SKIP:
                    if len(batch) > 1:  # one at a time, to find the bad frame
                        return [output for frame in batch for output in self._step([frame])]
                    frame = batch[0]
                    self.runners[frame.stream_id].failed += 1
                    if self.metrics is not None:
                        self.metrics.frames_failed.labels(frame.stream_id).inc()
                    log.warning("stream %s: frame %d skipped: %s", frame.stream_id, frame.index, exc)
                    return []
                where = ", ".join(f"{f.stream_id} frame {f.index}" for f in batch)
                if failure is Failure.FATAL or attempt == self.config.retries:
                    raise PipelineFailedError(f"the pipeline failed on {where}: {type(exc).__name__}: {exc}") from exc
                wait_s = self.config.retry_backoff_ms / 1000 * 2**attempt
                log.error("the pipeline failed on %s (%s: %s); retrying in %.1f s", where, type(exc).__name__, exc,
                          wait_s, exc_info=exc)
                if self._stop.wait(wait_s):
                    raise PipelineFailedError(f"stopped while retrying {where}") from exc
        raise AssertionError("unreachable")

    def _process(self, batch: list[Frame], progress: Callable[[int], None] | None) -> None:
        before = dict(self.pipeline.times.seconds)
        outputs = self._step(batch)
        for output in outputs:
            runner = self.runners[output.frame.stream_id]
            runner.processed += 1
            self._write(lambda sink: sink.write(output))
            for event in output.events:
                if event.type == "track_started":
                    self._tracks += 1
                elif event.type == "track_identified" and event.identity is not None:
                    self._identities.add(event.identity.name)
            if self.metrics is not None:
                self.metrics.count_output(output)
        if self.metrics is not None:
            for stage, seconds in self.pipeline.times.seconds.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds - before[stage])
        if progress is not None:
            progress(len(outputs))


class _ControlFile:
    """Reads ``add ID URI`` / ``remove ID`` lines appended to a file while the worker runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done_lines = 0

    def apply(self, worker: Worker) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines[self.done_lines:]:
            parts = line.split()
            try:
                if len(parts) == 3 and parts[0] == "add":
                    worker.add_stream(parts[1], parts[2])
                elif len(parts) == 2 and parts[0] == "remove":
                    worker.remove_stream(parts[1])
                elif parts and not parts[0].startswith("#"):
                    log.warning("control file %s: cannot understand %r (add ID URI | remove ID)", self.path, line)
            except (FaceStreamError, SourceUnavailableError) as exc:
                log.error("control file %s: %s", self.path, exc)
        self.done_lines = len(lines)
