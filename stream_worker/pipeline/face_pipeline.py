"""The per-frame pipeline: detect, align and analyse, track, identify, emit.

:class:`FacePipeline` processes a batch of frames (at most one per stream at a time, in
stream order) and returns, per frame, its :class:`FrameResult` and the track events it
caused. Per-stream state (tracker, track states, detection schedule) lives in a
:class:`StreamState` created on a stream's first frame and dropped by :meth:`end_stream`.

Schedules (so throughput is not bound by the full pyramid and the multi-task network on
every face of every frame):

- detection: a full MTCNN pass every ``detect_every_frames`` frames of a stream and on
  scene cuts; in between, only the boxes the tracker predicts are refined with R-Net and
  O-Net (a few crops instead of the image pyramid). A new face is found within
  ``detect_every_frames`` frames.
- analysis: every face of a full-detection frame is analysed; between, a confirmed
  track's face is analysed every ``analyze_every_frames`` frames. Faces of confirmed tracks
  report the track's smoothed age and gender; pose and quality are computed for every face
  on every frame (quality with the sharpness of the track's last analysis).
- identity embedding (the recognizer is most of the analysis's cost): every face of a scene
  cut, and any face not surely continuing a confirmed track (its embedding guards the
  tracker against joining different people); a face that surely continues a track (it
  joined by overlap, or overlaps the track's prediction by IoU >= 0.5 alone) only when its
  quality beats the track's best shot, the only embedding identification uses.
- within a shot, refined faces join their tracks by overlap; a scene cut (see
  :class:`SceneCut`) forces full detection and analysis, so no track crosses a cut on
  position alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from engines.detections import FaceDetections, iou_matrix
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.attributes import (
    FaceAttributes,
    head_pose,
    quality_score,
)
from engines.multitask.network import MultiTaskNet
from gallery.gallery import Gallery
from stream_worker.config import PipelineConfig
from stream_worker.messages.results import (
    FaceRecord,
    FaceTraits,
    FrameResult,
    TrackEnded,
    TrackEvent,
    TrackIdentified,
    TrackShots,
    TrackStarted,
)
from stream_worker.messages.state import StreamCheckpoint
from stream_worker.pipeline.frames import Frame
from stream_worker.pipeline.schedule import SceneCut
from stream_worker.pipeline.track_state import TrackState
from stream_worker.pipeline.tracker import FaceTracker, TrackUpdate

STAGES = ("detect", "analyze", "track", "identify")


@dataclass
class StageTimes:
    """Seconds spent per stage, and frames processed, since start."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    faces: int = 0


@dataclass(frozen=True)
class FrameOutput:
    """What one frame gave: its message, the track events it caused, and what sinks need."""

    frame: Frame
    result: FrameResult
    events: tuple[TrackEvent, ...]
    thumbnails: dict[int, bytes]
    """Best-shot JPEGs of the tracks that ended on this frame, by track id."""
    detections: FaceDetections


@dataclass
class _Step:
    """One frame's work in progress within a step (events accumulate until the step ends)."""

    frame: Frame
    detections: FaceDetections
    track_ids: list[int | None]
    traits: list[FaceTraits]
    events: list[TrackEvent] = field(default_factory=list)
    thumbnails: dict[int, bytes] = field(default_factory=dict)


@dataclass
class StreamState:
    tracker: FaceTracker
    scene: SceneCut
    tracks: dict[int, TrackState] = field(default_factory=dict)
    last_frame: int = -1
    last_full_detection: int | None = None


ThumbnailRef = Callable[[str, int], str | None]

_SURE_OVERLAP = 0.5
"""Overlap (IoU) with a confirmed track's predicted box above which a face on a full
detection is taken as that track's, for deciding whether to embed it."""


def _all_found(expected: list[np.ndarray], found: np.ndarray) -> bool:
    """Whether every expected box overlaps a found one (IoU >= 0.3)."""
    if not len(found):
        return False
    return bool((iou_matrix(np.array(expected, np.float64), found.astype(np.float64)).max(axis=1) >= 0.3).all())


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
            self.streams[stream_id] = StreamState(FaceTracker(self.config.tracker, self.multitask.profile.stats), SceneCut(self.config.scene_cut_mad))
        return self.streams[stream_id]

    # --- stages ----------------------------------------------------------------------------

    def _detect(self, frames: Sequence[Frame]) -> tuple[list[FaceDetections], list[bool], list[bool]]:
        """Detections per frame; whether each frame had a full detection; whether every face
        of it is embedded (a scene cut, or no track to continue)."""
        full: list[int] = []
        embed_all: list[bool] = []
        refine: list[int] = []
        predicted: list[dict[int, np.ndarray]] = []
        for k, frame in enumerate(frames):
            state = self._stream(frame.stream_id)
            cut = state.scene(frame.image)
            due = state.last_full_detection is None or frame.index - state.last_full_detection >= self.config.detect_every_frames
            boxes = state.tracker.predicted_boxes(frame.index)
            embed_all.append(cut or not boxes)
            if cut or due or not boxes:
                full.append(k)
                state.last_full_detection = frame.index
            else:
                refine.append(k)
                predicted.append(boxes)
        out: list[FaceDetections | None] = [None] * len(frames)
        if refine:
            refined = self.detector.refine_batch([frames[k].image for k in refine],
                                                 [np.array(list(boxes.values())) for boxes in predicted])
            for k, boxes, found in zip(refine, predicted, refined):
                waiting = self._stream(frames[k].stream_id).tracker.waiting_boxes(boxes)
                if waiting and not _all_found(waiting, found.boxes):
                    full.append(k)  # a new face that refinement lost: look for it in the whole frame
                    self._stream(frames[k].stream_id).last_full_detection = frames[k].index
                else:
                    out[k] = found
        if full:
            for k, found in zip(full, self.detector.detect_batch([frames[k].image for k in full])):
                out[k] = found
        is_full = [k in full for k in range(len(frames))]
        return [d for d in out if d is not None], is_full, embed_all

    def process(self, frames: Sequence[Frame]) -> list[FrameOutput]:
        """Process frames of different streams (one per stream, each after the previous frame
        of its stream).

        A step is atomic: if it raises (a model or gallery fault, a bad frame), every stream
        of the batch is left exactly as it was before the step, so the same frames can be
        retried (or replayed after a take-over) and give the same results."""
        if len({f.stream_id for f in frames}) != len(frames):
            raise ValueError("process() takes at most one frame per stream per call")
        for frame in frames:
            state = self.streams.get(frame.stream_id)
            if state is not None and frame.index <= state.last_frame:
                raise ValueError(f"stream {frame.stream_id}: frame {frame.index} after frame {state.last_frame}")
        saved = {f.stream_id: self._snapshot(f.stream_id) for f in frames}
        try:
            return self._step(frames)
        except BaseException:
            for stream_id, state in saved.items():
                if state is None:
                    self.streams.pop(stream_id, None)
                else:
                    self.streams[stream_id] = state
            raise

    def _snapshot(self, stream_id: str) -> StreamState | None:
        """A deep copy of a stream's state (the configuration objects are shared, not copied)."""
        state = self.streams.get(stream_id)
        if state is None:
            return None
        shared = {id(c): c for c in (self.config, self.config.tracker, self.config.identify)}
        return copy.deepcopy(state, shared)

    def _step(self, frames: Sequence[Frame]) -> list[FrameOutput]:
        times = self.times.seconds
        started = time.perf_counter()
        detections, is_full, embed_all = self._detect(frames)
        times["detect"] += time.perf_counter() - started

        # Refined frames join tracks by overlap first, so their analyses can be scheduled.
        started = time.perf_counter()
        updates: dict[int, TrackUpdate] = {}
        for k, frame in enumerate(frames):
            if not is_full[k]:
                updates[k] = self._stream(frame.stream_id).tracker.update(frame.index, detections[k].boxes, None,
                                                                          full=False)
        times["track"] += time.perf_counter() - started

        started = time.perf_counter()
        rows = [self._to_analyse(frame, detections[k], is_full[k], updates.get(k)) for k, frame in enumerate(frames)]
        owners = [self._owners(frame, detections[k], updates.get(k)) for k, frame in enumerate(frames)]

        def embed_if(k: int, row: int, quality: float) -> bool:
            """Embed a face unless it surely continues a track whose best shot it does not beat
            (its embedding would change nothing: identity comes from best shots)."""
            if embed_all[k]:
                return True
            track = owners[k].get(rows[k][row])
            return track is None or track.best is None or quality > track.best.quality

        analysed = self.multitask.analyze([f.image for f in frames], [d[r] for d, r in zip(detections, rows)],
                                          embed_if=embed_if)
        times["analyze"] += time.perf_counter() - started

        started = time.perf_counter()
        for k, frame in enumerate(frames):
            if is_full[k]:
                embeddings = analysed[k].embeddings if len(detections[k]) else None
                updates[k] = self._stream(frame.stream_id).tracker.update(frame.index, detections[k].boxes, embeddings)
        steps = [
            self._record(frame, detections[k], updates[k], rows[k], analysed[k]) for k, frame in enumerate(frames)
        ]
        times["track"] += time.perf_counter() - started

        started = time.perf_counter()
        self._identify(steps)
        times["identify"] += time.perf_counter() - started

        outputs = [FrameOutput(s.frame, self._frame_result(s), tuple(s.events), s.thumbnails, s.detections)
                   for s in steps]
        self.times.frames += len(frames)
        self.times.faces += sum(len(d) for d in detections)
        return outputs

    def _owners(self, frame: Frame, faces: FaceDetections, update: TrackUpdate | None) -> dict[int, TrackState]:
        """The confirmed track each face surely belongs to: on a refined frame, the one it
        joined; on a full detection, the one track whose predicted box it alone overlaps by
        ``_SURE_OVERLAP`` or more (it then matches that track on position, as refined faces do)."""
        tracks = self._stream(frame.stream_id).tracks
        if update is not None:
            return {i: tracks[t] for i, t in enumerate(update.track_ids) if t is not None and t in tracks}
        predicted = self._stream(frame.stream_id).tracker.confirmed_predictions(frame.index)
        if not predicted or not len(faces):
            return {}
        ids = list(predicted)
        overlap = iou_matrix(faces.boxes.astype(np.float64), np.array([predicted[t] for t in ids]))
        out = {}
        for i in range(len(faces)):
            j = int(np.argmax(overlap[i]))
            if overlap[i, j] >= _SURE_OVERLAP and ids[j] in tracks and (overlap[:, j] >= _SURE_OVERLAP).sum() == 1:
                out[i] = tracks[ids[j]]
        return out

    def _to_analyse(self, frame: Frame, faces: FaceDetections, full: bool, update: TrackUpdate | None) -> list[int]:
        if full or update is None:
            return list(range(len(faces)))
        tracks = self._stream(frame.stream_id).tracks
        every = self.config.analyze_every_frames
        return [
            i for i, track_id in enumerate(update.track_ids)
            if track_id is None or track_id not in tracks or tracks[track_id].due(frame.index, every)
        ]

    def _record(
        self, frame: Frame, faces: FaceDetections, update: TrackUpdate, rows: list[int], analysed: FaceAttributes
    ) -> _Step:
        """Track events, track states and per-face traits of one frame."""
        state = self._stream(frame.stream_id)
        state.last_frame = frame.index
        events: list[TrackEvent] = []
        for track_id in update.started:
            state.tracks[track_id] = TrackState(frame.stream_id, track_id, frame.index, frame.pts_ms,
                                                self.config.identify, first_utc=frame.received)
            events.append(TrackStarted(stream_id=frame.stream_id, track_id=track_id, frame_index=frame.index,
                                       pts_ms=frame.pts_ms))
        fresh = {face: j for j, face in enumerate(rows)}
        poses = np.zeros((len(faces), 3), np.float32)
        unanalysed = [i for i in range(len(faces)) if i not in fresh]
        if unanalysed:
            poses[unanalysed] = head_pose(faces.landmarks[unanalysed], faces.image_width, faces.image_height)
        for i, j in fresh.items():
            poses[i] = analysed.poses[j]
        traits: list[FaceTraits] = []
        for i, track_id in enumerate(update.track_ids):
            track = state.tracks.get(track_id) if track_id is not None else None
            j = fresh.get(i)
            if j is not None and track is not None:
                improved = track.observe(
                    frame.index, frame.pts_ms, faces.boxes[i], float(analysed.qualities[j]), float(analysed.ages[j]),
                    float(analysed.male_probs[j]),
                    analysed.embeddings[j] if np.isfinite(analysed.embeddings[j]).all() else None,
                    float(analysed.sharpness[j]), frame.received, analysed.attributes_of(j), analysed.expression_of(j),
                )
                if improved and track.best is not None:
                    track.best.jpeg = self._thumbnail(frame.image, faces.boxes[i])
            elif track is not None:
                track.seen(frame.index, frame.pts_ms, frame.received)
            traits.append(self._traits(faces, i, poses[i], track, analysed, j))
        thumbnails = {}
        for track_id in update.ended:
            event, jpeg = self._end_track(state, frame.stream_id, track_id)
            events.append(event)
            if jpeg is not None:
                thumbnails[track_id] = jpeg
        return _Step(frame, faces, update.track_ids, traits, events, thumbnails)

    @staticmethod
    def _traits(
        faces: FaceDetections, i: int, pose: np.ndarray, track: TrackState | None, analysed: FaceAttributes, j: int | None
    ) -> FaceTraits:
        """A face's attributes: the track's smoothed age, gender, attributes and expression when it has a track, the
        frame's own estimate otherwise; pose and quality of this frame."""
        side = np.array([max(faces.boxes[i, 2] - faces.boxes[i, 0], faces.boxes[i, 3] - faces.boxes[i, 1])])
        if j is not None:
            sharpness = float(analysed.sharpness[j])
        else:
            sharpness = track.sharpness if track is not None else 0.0
        quality = float(quality_score(side, np.array([sharpness]), pose[None], faces.scores[i : i + 1])[0])
        if track is not None and track.frames_analysed:
            age, spread = track.age
            return FaceTraits.estimate(age, spread, track.male_probability, pose, quality, track.attributes,
                                       track.expression)
        if j is None:  # cannot happen: faces without a track are always analysed
            raise ValueError("a face without a track was not analysed")
        return FaceTraits.estimate(float(analysed.ages[j]), float(analysed.age_stds[j]),
                                   float(analysed.male_probs[j]), pose, quality, analysed.attributes_of(j),
                                   analysed.expression_of(j))

    def _identify(self, steps: list[_Step]) -> None:
        if self.gallery is None:
            return
        wanting = [
            (step, track, track.best)
            for step in steps
            for track in self._stream(step.frame.stream_id).tracks.values()
            if track.last_frame == step.frame.index and track.wants_search() and track.best is not None
        ]
        if not wanting:
            return
        results = self.gallery.search(np.stack([best.embedding for _, _, best in wanting]), k=1)
        for (step, track, best), matches in zip(wanting, results):
            previous = track.identity
            changed = track.add_search(matches[0] if matches else None, best.quality)
            if changed is not None:
                frame = step.frame
                step.events.append(TrackIdentified(
                    stream_id=frame.stream_id, track_id=track.track_id, frame_index=frame.index, pts_ms=frame.pts_ms,
                    identity=changed, previous_identity=previous,
                ))

    def _frame_result(self, step: _Step) -> FrameResult:
        frame, faces = step.frame, step.detections
        tracks = self._stream(frame.stream_id).tracks
        records = []
        for i, (found, track_id, traits) in enumerate(zip(faces.to_json(), step.track_ids, step.traits)):
            identity = tracks[track_id].identity if track_id is not None and track_id in tracks else None
            records.append(FaceRecord(**found, track_id=track_id, identity=identity, **traits.model_dump()))
        height, width = frame.image.shape[:2]
        return FrameResult(stream_id=frame.stream_id, frame_index=frame.index, pts_ms=frame.pts_ms,
                           received_utc=frame.received_utc, width=width, height=height, faces=tuple(records),
                           gap=frame.gap)

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

    def _end_track(self, state: StreamState, stream_id: str, track_id: int) -> tuple[TrackEvent, bytes | None]:
        track = state.tracks.pop(track_id)  # per-track state is evicted when the track ends
        jpeg = track.best.jpeg if track.best is not None else None
        reference = self.thumbnail_ref(stream_id, track_id) if jpeg else None
        event = TrackEnded(stream_id=stream_id, track_id=track_id, frame_index=track.last_frame,
                           pts_ms=track.last_pts_ms, identity=track.identity, summary=track.summary(reference))
        if track.best is not None:  # in-process only: the sinks that publish or store embeddings take them
            qualities, vectors = track.embeddings
            event.with_embeddings(TrackShots(self.multitask.profile.model_id, qualities, vectors))
        return event, jpeg

    # --- checkpoints (Kafka: a partition's streams move between workers) ---------------------

    def stream_checkpoint(self, stream_id: str, *, closed: bool = False) -> StreamCheckpoint | None:
        """A stream's whole state (``closed``: only what a fresh start after
        :meth:`end_stream` must keep: the next track id and the last frame), or None for a
        stream this pipeline has not seen."""
        state = self.streams.get(stream_id)
        if state is None:
            return None
        if closed:
            return StreamCheckpoint(last_frame=state.last_frame, next_track_id=state.tracker.next_id, closed=True)
        return StreamCheckpoint(
            last_frame=state.last_frame, next_track_id=state.tracker.next_id, closed=False,
            last_full_detection=state.last_full_detection, tracker=state.tracker.to_state(),
            scene=state.scene.to_state(), tracks=tuple(t.to_state() for t in state.tracks.values()),
        )

    def restore_stream(self, stream_id: str, record: StreamCheckpoint) -> None:
        """Continue a stream from :meth:`stream_checkpoint`'s output."""
        self.streams.pop(stream_id, None)
        state = self._stream(stream_id)
        state.last_frame = record.last_frame
        if record.closed:
            state.tracker.continue_ids_from(record.next_track_id)
            return
        if record.tracker is None or record.scene is None:
            raise ValueError(f"stream {stream_id}: an open checkpoint without tracker or scene state")
        state.last_full_detection = record.last_full_detection
        state.tracker.restore(record.tracker)
        state.scene.restore(record.scene)
        for t in record.tracks:
            track = TrackState.from_state(t, self.config.identify)
            state.tracks[track.track_id] = track

    def last_frame(self, stream_id: str) -> int:
        """The index of the last frame processed on a stream (-1 for a stream not seen)."""
        state = self.streams.get(stream_id)
        return -1 if state is None else state.last_frame

    def drop_stream(self, stream_id: str) -> None:
        """Forget a stream without ending its tracks (its partition moved to another worker,
        or a checkpoint will restore it)."""
        self.streams.pop(stream_id, None)

    def forget_identity(self, identity_id: str) -> None:
        """An identity was erased: live tracks drop its votes and, if named after it, the name."""
        for state in self.streams.values():
            for track in state.tracks.values():
                track.forget_identity(identity_id)

    def end_stream(self, stream_id: str) -> tuple[list[TrackEvent], dict[int, bytes]]:
        """End every live track of a stream (end of file, stream removed, partition revoked)
        and forget the stream's state."""
        state = self.streams.pop(stream_id, None)
        if state is None:
            return [], {}
        events, thumbnails = [], {}
        for track_id in sorted(state.tracks):
            event, jpeg = self._end_track(state, stream_id, track_id)
            events.append(event)
            if jpeg is not None:
                thumbnails[track_id] = jpeg
        state.tracker.reset()
        return events, thumbnails


def stage_summary(times: StageTimes) -> dict[str, float]:
    """Milliseconds per processed frame spent in each stage."""
    frames = max(times.frames, 1)
    return {stage: round(seconds / frames * 1000, 2) for stage, seconds in times.seconds.items()}
