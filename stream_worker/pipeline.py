"""The per-frame pipeline: detect, align and analyse, track, identify, emit.

:class:`FacePipeline` processes a batch of frames (at most one per stream at a time, in
stream order) and returns, per frame, its :class:`FrameResult` and the track events it
caused. Per-stream state (tracker, track states, detection schedule) lives in a
:class:`StreamState` created on a stream's first frame and dropped by :meth:`end_stream`.

Detection schedule: a full MTCNN pass every ``detect_every_frames`` frames of a stream;
in between, only the boxes the tracker predicts are refined with R-Net and O-Net (a few
crops instead of the image pyramid). A new face is therefore found within
``detect_every_frames`` frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from engines.detections import FaceDetections
from engines.errors import ConfigError
from engines.face_attributes import FaceAttributes
from engines.mtcnn import MTCNNDetector
from engines.multitask import MultiTaskNet
from gallery.gallery import Gallery
from stream_worker.frames import Frame, now_utc
from stream_worker.messages import FrameResult, TrackEvent
from stream_worker.track_state import IdentifyConfig, TrackState
from stream_worker.tracker import FaceTracker, TrackerConfig


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    detect_every_frames: int = 3
    """Full detection on every n-th frame of a stream; refinement of tracked faces between."""
    thumbnail_size_px: int = 160
    """Longest side of a best-shot JPEG."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)

    def __post_init__(self) -> None:
        if self.detect_every_frames < 1 or self.thumbnail_size_px < 16:
            raise ConfigError("pipeline: detect_every_frames must be >= 1 and thumbnail_size_px >= 16")


STAGES = ("detect", "analyze", "track", "identify")


@dataclass
class StageTimes:
    """Seconds spent per stage, and frames processed, since start."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    faces: int = 0


@dataclass
class FrameOutput:
    frame: Frame
    result: FrameResult
    events: list[TrackEvent]
    thumbnails: dict[int, bytes]
    """Best-shot JPEGs of the tracks that ended on this frame, by track id."""
    detections: FaceDetections
    track_ids: list[int | None]


@dataclass
class StreamState:
    tracker: FaceTracker
    tracks: dict[int, TrackState] = field(default_factory=dict)
    last_frame: int = -1
    last_full_detection: int | None = None


ThumbnailRef = Callable[[str, int], str | None]


class FacePipeline:
    def __init__(
        self,
        detector: MTCNNDetector,
        multitask: MultiTaskNet,
        gallery: Gallery | None,
        config: PipelineConfig | None = None,
        *,
        thumbnail_ref: ThumbnailRef = lambda stream, track: None,
    ) -> None:
        self.detector = detector
        self.multitask = multitask
        self.gallery = gallery
        self.config = config or PipelineConfig()
        self.thumbnail_ref = thumbnail_ref
        self.streams: dict[str, StreamState] = {}
        self.times = StageTimes()

    def _stream(self, stream_id: str) -> StreamState:
        if stream_id not in self.streams:
            self.streams[stream_id] = StreamState(FaceTracker(self.config.tracker))
        return self.streams[stream_id]

    # --- stages ----------------------------------------------------------------------------

    def _detect(self, frames: Sequence[Frame]) -> list[FaceDetections]:
        full, refine = [], []
        for k, frame in enumerate(frames):
            state = self._stream(frame.stream_id)
            due = state.last_full_detection is None or frame.index - state.last_full_detection >= self.config.detect_every_frames
            if due or not state.tracker.predicted_boxes(frame.index):
                full.append(k)
                state.last_full_detection = frame.index
            else:
                refine.append(k)
        out: list[FaceDetections | None] = [None] * len(frames)
        if full:
            for k, found in zip(full, self.detector.detect_batch([frames[k].image for k in full])):
                out[k] = found
        if refine:
            predicted = [np.array(list(self._stream(frames[k].stream_id).tracker.predicted_boxes(frames[k].index).values()))
                         for k in refine]
            for k, found in zip(refine, self.detector.refine_batch([frames[k].image for k in refine], predicted)):
                out[k] = found
        return [d for d in out if d is not None]

    def process(self, frames: Sequence[Frame]) -> list[FrameOutput]:
        """Process frames of different streams (one per stream, each after the previous frame
        of its stream)."""
        if len({f.stream_id for f in frames}) != len(frames):
            raise ValueError("process() takes at most one frame per stream per call")
        for frame in frames:
            state = self._stream(frame.stream_id)
            if frame.index <= state.last_frame:
                raise ValueError(f"stream {frame.stream_id}: frame {frame.index} after frame {state.last_frame}")
        times = self.times.seconds
        started = time.perf_counter()
        detections = self._detect(frames)
        times["detect"] += time.perf_counter() - started

        started = time.perf_counter()
        attributes = self.multitask.analyze([f.image for f in frames], detections)
        times["analyze"] += time.perf_counter() - started

        started = time.perf_counter()
        outputs = [self._track(frame, faces, attrs) for frame, faces, attrs in zip(frames, detections, attributes)]
        times["track"] += time.perf_counter() - started

        started = time.perf_counter()
        self._identify(frames, outputs)
        times["identify"] += time.perf_counter() - started

        for output, attrs in zip(outputs, attributes):
            output.result = self._frame_result(output, attrs)
        self.times.frames += len(frames)
        self.times.faces += sum(len(d) for d in detections)
        return outputs

    def _track(self, frame: Frame, faces: FaceDetections, attrs: FaceAttributes) -> FrameOutput:
        state = self._stream(frame.stream_id)
        state.last_frame = frame.index
        update = state.tracker.update(frame.index, faces.boxes, attrs.embeddings if len(faces) else None)
        events = []
        for track_id in update.started:
            state.tracks[track_id] = TrackState(frame.stream_id, track_id, frame.index, frame.pts_ms, self.config.identify)
            events.append(TrackEvent("track_started", frame.stream_id, track_id, frame.index, frame.pts_ms))
        for i, track_id in enumerate(update.track_ids):
            if track_id is None:
                continue
            track = state.tracks[track_id]
            improved = track.observe(
                frame.index, frame.pts_ms, faces.boxes[i], float(attrs.qualities[i]), float(attrs.ages[i]),
                float(attrs.male_probs[i]), attrs.embeddings[i],
            )
            if improved and track.best is not None:
                track.best.jpeg = self._thumbnail(frame.image, faces.boxes[i])
        thumbnails = {}
        for track_id in update.ended:
            event, jpeg = self._end_track(state, track_id, frame)
            events.append(event)
            if jpeg is not None:
                thumbnails[track_id] = jpeg
        empty = FrameResult(frame.stream_id, frame.index, frame.pts_ms, frame.received_utc, 1, 1, ())
        return FrameOutput(frame, empty, events, thumbnails, faces, update.track_ids)

    def _identify(self, frames: Sequence[Frame], outputs: list[FrameOutput]) -> None:
        if self.gallery is None:
            return
        wanting = [
            (output, track, track.best)
            for output in outputs
            for track in self._stream(output.frame.stream_id).tracks.values()
            if track.last_frame == output.frame.index and track.wants_search() and track.best is not None
        ]
        if not wanting:
            return
        results = self.gallery.search(np.stack([best.embedding for _, _, best in wanting]), k=1)
        for (output, track, best), matches in zip(wanting, results):
            previous = track.identity
            changed = track.add_search(matches[0] if matches else None, best.quality)
            if changed is not None:
                frame = output.frame
                output.events.append(TrackEvent(
                    "track_identified", frame.stream_id, track.track_id, frame.index, frame.pts_ms,
                    identity=changed, previous_identity=previous,
                ))

    def _frame_result(self, output: FrameOutput, attrs: FaceAttributes) -> FrameResult:
        frame, faces = output.frame, output.detections
        tracks = self._stream(frame.stream_id).tracks
        records = []
        for i, face in enumerate(faces.to_json()):
            track_id = output.track_ids[i]
            identity = tracks[track_id].identity if track_id is not None and track_id in tracks else None
            face.update(attrs.to_json(i))
            face["track_id"] = track_id
            face["identity"] = None if identity is None else identity.to_json()
            records.append(face)
        height, width = frame.image.shape[:2]
        return FrameResult(frame.stream_id, frame.index, frame.pts_ms, frame.received_utc, width, height,
                           tuple(records), frame.gap)

    # --- tracks ---------------------------------------------------------------------------

    def _thumbnail(self, image: np.ndarray, box: np.ndarray) -> bytes:
        x1, y1, x2, y2 = box
        pad = 0.25 * max(x2 - x1, y2 - y1)
        h, w = image.shape[:2]
        crop = image[max(0, int(y1 - pad)):min(h, int(y2 + pad)), max(0, int(x1 - pad)):min(w, int(x2 + pad))]
        scale = self.config.thumbnail_size_px / max(crop.shape[:2])
        if scale < 1:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return encoded.tobytes() if ok else b""

    def _end_track(self, state: StreamState, track_id: int, frame: Frame) -> tuple[TrackEvent, bytes | None]:
        track = state.tracks.pop(track_id)  # per-track state is evicted when the track ends
        jpeg = track.best.jpeg if track.best is not None else None
        reference = self.thumbnail_ref(frame.stream_id, track_id) if jpeg else None
        event = TrackEvent(
            "track_ended", frame.stream_id, track_id, track.last_frame, track.last_pts_ms,
            identity=track.identity, summary=track.summary(reference),
        )
        return event, jpeg

    def end_stream(self, stream_id: str) -> tuple[list[TrackEvent], dict[int, bytes]]:
        """End every live track of a stream (end of file, stream removed, partition revoked)
        and forget the stream's state."""
        state = self.streams.pop(stream_id, None)
        if state is None:
            return [], {}
        events, thumbnails = [], {}
        last = Frame(stream_id, state.last_frame, None, np.zeros((1, 1, 3), np.uint8), now_utc())
        for track_id in sorted(state.tracks):
            event, jpeg = self._end_track(state, track_id, last)
            events.append(event)
            if jpeg is not None:
                thumbnails[track_id] = jpeg
        state.tracker.reset()
        return events, thumbnails


def stage_summary(times: StageTimes) -> dict[str, float]:
    """Milliseconds per frame and frames per second of each stage."""
    frames = max(times.frames, 1)
    return {stage: round(seconds / frames * 1000, 2) for stage, seconds in times.seconds.items()}
