"""Checkpoints of a stream's pipeline state are exact: a pipeline restored from one (after a
JSON round trip, in another pipeline object) continues exactly as the original would."""

from __future__ import annotations

import base64
import json

import pytest

from gallery.gallery import Gallery
from stream_worker.messages.state import PackedArray, StreamCheckpoint
from stream_worker.pipeline.face_pipeline import FacePipeline
from stream_worker.pipeline.frames import Frame


def _messages(pipeline: FacePipeline, frames: list[Frame]) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for frame in frames:
        for output in pipeline.process([frame]):
            out.append(output.result.to_json())
            out += [e.to_json() for e in output.events]
    return out


@pytest.fixture(scope="module")
def whole(detector, multitask, hamilton_gallery: Gallery, hamilton_frames: list[Frame]) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    """The messages of one uninterrupted run over the first 200 frames."""
    return _messages(FacePipeline(detector, multitask, hamilton_gallery), hamilton_frames[:200])


@pytest.mark.parametrize("split", [12, 97, 150])
def test_restored_pipeline_continues_exactly(detector, multitask, hamilton_gallery: Gallery, hamilton_frames: list[Frame],  # type: ignore[no-untyped-def]
                                             whole: list[dict], split: int) -> None:  # type: ignore[type-arg]
    frames = hamilton_frames[:200]

    first = FacePipeline(detector, multitask, hamilton_gallery)
    before = _messages(first, frames[:split])
    saved = StreamCheckpoint.model_validate_json(first.stream_checkpoint("hamilton").encode())  # as on the wire
    assert saved.tracks or split == 12 or saved.tracker.tracks, "the split should fall inside live tracks"
    second = FacePipeline(detector, multitask, hamilton_gallery)
    second.restore_stream("hamilton", saved)
    after = _messages(second, frames[split:])
    assert before + after == whole
    assert any(m.get("type") == "track_identified" for m in whole)


def test_closed_checkpoint_never_reuses_track_ids(detector, multitask, hamilton_frames: list[Frame]) -> None:  # type: ignore[no-untyped-def]
    first = FacePipeline(detector, multitask, None)
    before = _messages(first, hamilton_frames[:60])
    closed = StreamCheckpoint.model_validate_json(first.stream_checkpoint("hamilton", closed=True).encode())
    ended, _ = first.end_stream("hamilton")
    used = {m["track_id"] for m in before if m.get("type") == "track_started"}
    assert used and {e.track_id for e in ended} <= used

    second = FacePipeline(detector, multitask, None)
    second.restore_stream("hamilton", closed)
    after = _messages(second, hamilton_frames[60:120])
    started = {m["track_id"] for m in after if m.get("type") == "track_started"}
    assert started and not started & used, "a fresh start after a revoke must continue the stream's track ids"
    third = FacePipeline(detector, multitask, None)
    third.restore_stream("hamilton", closed)
    with pytest.raises(ValueError, match="frame 10 after frame 59"):  # replayed frames are refused, not re-tracked
        third.process([hamilton_frames[10]])


def test_checkpoint_refuses_other_formats_and_damage() -> None:
    with pytest.raises(ValueError, match="format"):
        StreamCheckpoint.model_validate({"format": "pickle", "last_frame": 1, "next_track_id": 1, "closed": True})
    with pytest.raises(ValueError, match="only numeric arrays"):
        PackedArray.model_validate({"dtype": "|O", "shape": [1], "data": ""})
    with pytest.raises(ValueError, match="last_frame"):
        StreamCheckpoint.model_validate({"last_frame": "x", "next_track_id": 1, "closed": True})


def test_best_shots_leave_the_checkpoint_and_come_back_bit_identical(  # type: ignore[no-untyped-def]
    detector, multitask, hamilton_frames: list[Frame],
) -> None:
    from stream_worker.messages.state import attach_shots, detach_shots, shot_refs

    pipeline = FacePipeline(detector, multitask, None)
    _messages(pipeline, hamilton_frames[:40])
    original = {"partition": 0, "streams": {"hamilton": pipeline.stream_checkpoint("hamilton").to_json()}}
    jpegs = [base64.b64decode(t["best"]["jpeg"]) for t in original["streams"]["hamilton"]["tracks"] if t["best"]]
    assert len(jpegs) >= 2 and all(j.startswith(b"\xff\xd8") for j in jpegs)
    state = json.loads(json.dumps(original))
    shots = detach_shots(state, "g/frames/0")
    assert sorted(shots.values()) == sorted(jpegs)  # one message per best shot
    assert all(k.startswith("g/frames/0/shot/") for k in shots) and shot_refs(state) == set(shots)
    assert len(json.dumps(state)) < len(json.dumps(original)) - sum(len(j) for j in jpegs)  # no JPEG left inline
    assert detach_shots(json.loads(json.dumps(original)), "g/frames/0") == shots  # content-addressed: same keys
    assert attach_shots(state, shots) == [] and state == original
    # a missing shot: the track goes on without a thumbnail
    state = json.loads(json.dumps(original))
    shots = detach_shots(state, "g/frames/0")
    lost = min(shots)
    assert attach_shots(state, {k: v for k, v in shots.items() if k != lost}) == [lost]
    assert sum(t["best"]["jpeg"] is None for t in state["streams"]["hamilton"]["tracks"] if t["best"]) == 1
    restored = FacePipeline(detector, multitask, None)
    restored.restore_stream("hamilton", StreamCheckpoint.model_validate(state["streams"]["hamilton"]))
    assert _messages(restored, hamilton_frames[40:60]) == _messages(pipeline, hamilton_frames[40:60])


def test_a_checkpoint_too_large_for_a_message_is_skipped(detector, multitask,  # type: ignore[no-untyped-def]
                                                         hamilton_frames: list[Frame]) -> None:
    from stream_worker.kafka.checkpoints import fitting_checkpoint
    from stream_worker.messages.state import detach_shots

    pipeline = FacePipeline(detector, multitask, None)
    _messages(pipeline, hamilton_frames[:40])
    state = {"partition": 0, "streams": {"hamilton": pipeline.stream_checkpoint("hamilton").to_json()}}
    detach_shots(state, "g/frames/0")
    size = len(json.dumps(state).encode())

    def fitted(limit: int) -> bytes | None:
        return fitting_checkpoint(state, limit)

    assert fitted(size) == json.dumps(state).encode()
    assert fitted(size - 1) is None


def test_results_do_not_depend_on_how_streams_are_batched(detector, multitask, hamilton_gallery: Gallery,  # type: ignore[no-untyped-def]
                                                          hamilton_frames: list[Frame]) -> None:
    """A replay after a take-over may batch a partition's cameras differently than the first
    run did; its messages must still be identical (the models are batch-invariant)."""
    import dataclasses

    cameras = [[dataclasses.replace(f, stream_id=f"cam{c}") for f in hamilton_frames[40 * c: 40 * c + 40]] for c in range(3)]
    alone = [m for frames in cameras for m in _messages(FacePipeline(detector, multitask, hamilton_gallery), frames)]
    together = FacePipeline(detector, multitask, hamilton_gallery)
    batched = []
    for step in zip(*cameras):
        for output in together.process(list(step)):
            batched += [output.result.to_json(), *(e.to_json() for e in output.events)]
    def by_event(messages: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return sorted(messages, key=lambda m: m["event_id"])

    assert by_event(batched) == by_event(alone)
    assert sum(len(m.get("faces", ())) for m in alone) > 60
