"""A pipeline step is atomic: one that fails half-way leaves every stream as it was, so the
retried frame gives exactly the messages of a run that never failed."""

from __future__ import annotations

from typing import Any

import pytest

from gallery.gallery import Gallery
from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput
from stream_worker.pipeline.frames import Frame


class FailsOncePer:
    """Wraps a model or the gallery: while ``armed``, the next call of ``method`` raises (as a
    device fault would) and disarms, so the retry goes through."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner, self.method = inner, method
        self.armed = False
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.armed = False
                self.failures += 1
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return attribute(*args, **kwargs)

        return call


def messages(outputs: list[FrameOutput]) -> list[Any]:
    return [(o.result.to_json(), [e.to_json() for e in o.events], o.thumbnails) for o in outputs]


@pytest.mark.parametrize("stage", ["analyze", "identify"])
def test_a_step_that_fails_half_way_and_is_retried_gives_the_messages_of_a_clean_run(
    detector, multitask, hamilton_gallery: Gallery, hamilton_frames: list[Frame], stage: str,  # type: ignore[no-untyped-def]
) -> None:
    frames = hamilton_frames[:100]  # Lin's track is confirmed, searched and named in these
    clean = FacePipeline(detector, multitask, hamilton_gallery)
    expected = messages([o for f in frames for o in clean.process([f])])

    if stage == "analyze":  # fails after detection and the tracker's update of refined faces
        flaky = FailsOncePer(multitask, "analyze")
        pipeline = FacePipeline(detector, flaky, hamilton_gallery)  # type: ignore[arg-type]
    else:  # fails after tracking and the track states took the frame: the last stage
        flaky = FailsOncePer(hamilton_gallery, "search")
        pipeline = FacePipeline(detector, multitask, flaky)  # type: ignore[arg-type]
    got = []
    for frame in frames:
        flaky.armed = stage == "identify" or frame.index % 3 == 0  # every search fails once
        try:
            outputs = pipeline.process([frame])
        except RuntimeError:
            outputs = pipeline.process([frame])  # the worker's retry
        got += outputs
    assert flaky.failures >= 5, "the fault was never injected where it matters"
    assert messages(got) == expected


def test_a_failed_first_frame_leaves_no_stream_behind(detector, multitask, hamilton_frames: list[Frame]) -> None:  # type: ignore[no-untyped-def]
    flaky = FailsOncePer(multitask, "analyze")
    pipeline = FacePipeline(detector, flaky, None)  # type: ignore[arg-type]
    flaky.armed = True
    with pytest.raises(RuntimeError):
        pipeline.process([hamilton_frames[0]])
    assert pipeline.last_frame("hamilton") == -1 and pipeline.stream_checkpoint("hamilton") is None
