"""`facestream run`'s worker and failures: a frame that is the input's fault is skipped and
counted; a fault that is not the input's is retried (the step is atomic, so the retry gives
what the first try would have), and a persistent one ends the run cleanly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InvalidImageError
from stream_worker.config import StreamConfig
from stream_worker.local.sinks import JsonLinesSink
from stream_worker.local.worker import Worker
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FacePipeline
from stream_worker.pipeline.frames import Frame, now_utc


class ClipSource:
    """Frames of the real clip, already decoded (the worker's failure handling is under test)."""

    live = False
    corrupt_packets = 0

    def __init__(self, stream_id: str, images: list[np.ndarray]) -> None:
        self.stream_id, self.uri, self.images = stream_id, "test://clip", images

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for index, image in enumerate(self.images):
            yield Frame(self.stream_id, index, index * 33.367, image, now_utc())


class Faulty(FacePipeline):
    """Refuses frame ``poison`` as bad input; raises a device fault on ``fault_calls`` steps."""

    def __init__(self, *args: Any, poison: int = -1, fault_calls: set[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison, self.fault_calls, self.calls = poison, fault_calls, 0

    def _step(self, frames: Any) -> Any:
        self.calls += 1
        if any(f.index == self.poison for f in frames):
            raise InvalidImageError(f"frame {self.poison}: unusable picture")
        if self.calls in self.fault_calls:
            raise RuntimeError("CUDA error: out of memory")
        return super()._step(frames)


def run(pipeline: FacePipeline, images: list[np.ndarray], out: Path, **stream: Any) -> tuple[Any, list[dict]]:  # type: ignore[type-arg]
    metrics = WorkerMetrics()
    worker = Worker(pipeline, [JsonLinesSink(out)], StreamConfig(retry_backoff_ms=1, **stream), metrics=metrics,
                    source_factory=lambda sid, uri, **_: ClipSource(sid, images))
    worker.add_stream("clip", "test://clip")
    summary = worker.run()
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def frames_of(messages: list[dict]) -> list[int]:  # type: ignore[type-arg]
    return [m["frame_index"] for m in messages if m["schema"] == "facestream.frame/2"]


def test_a_bad_frame_is_skipped_and_a_passing_fault_is_retried(detector, multitask, hamilton_frames: list[Frame],  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    images = [f.image for f in hamilton_frames[:60]]
    clean_summary, clean = run(Faulty(detector, multitask, None, poison=20), images, tmp_path / "clean.jsonl")
    faulty = Faulty(detector, multitask, None, poison=20, fault_calls={30, 31, 45})  # two in a row, then one
    summary, messages = run(faulty, images, tmp_path / "faulty.jsonl")
    assert frames_of(messages) == [i for i in range(60) if i != 20]
    def timeless(records: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        """Without the receive times (the frames were read twice): frames' and tracks' spans."""
        out = []
        for m in records:
            m = {k: v for k, v in m.items() if k != "received_utc"}
            if "summary" in m:
                m["summary"] = {k: v for k, v in m["summary"].items() if k not in ("first_utc", "last_utc")}
            out.append(m)
        return out

    assert timeless(messages) == timeless(clean)  # the retried steps gave exactly what the clean run gave
    assert summary.stopped_by is None and summary.streams["clip"]["frames_failed"] == 1
    assert clean_summary.streams["clip"]["frames_failed"] == 1


def test_a_fault_that_persists_ends_the_run_with_every_track_ended(detector, multitask,  # type: ignore[no-untyped-def]
                                                                    hamilton_frames: list[Frame],
                                                                    tmp_path: Path) -> None:
    images = [f.image for f in hamilton_frames[:60]]
    faulty = Faulty(detector, multitask, None, fault_calls=set(range(40, 1000)))  # from step 40 on, for good
    summary, messages = run(faulty, images, tmp_path / "out.jsonl", retries=2)
    assert summary.stopped_by is not None and "the pipeline failed on clip frame 39" in summary.stopped_by
    assert "RuntimeError: CUDA error: out of memory" in summary.stopped_by
    assert frames_of(messages) == list(range(39))
    started = {m["track_id"] for m in messages if m.get("type") == "track_started"}
    ended = {m["track_id"] for m in messages if m.get("type") == "track_ended"}
    assert started and started == ended  # ended, not dropped
