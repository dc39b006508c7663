"""Face tracking for one stream: ``update(faces) -> track ids`` and ``reset()``.

Each track has a constant-velocity Kalman filter on (centre x, centre y, side) and a
running mean of its identity embeddings. Every frame, tracks are predicted and matched to
the frame's faces with the Hungarian algorithm (SciPy) on a cost that mixes box overlap
(IoU with the predicted box) and appearance (embedding similarity); a pair is allowed when
the boxes overlap or, after an occlusion, when the face looks like the track and is near
where it was predicted. Tracks are confirmed after ``min_hits`` matches and survive
``max_missed_frames`` frames without a match. Ids come from this instance's own counter.

A new (unconfirmed) track is judged by full detections only: it dies when two full
detections in a row miss it, not when the cheaper refine step around its predicted box
does, so a face that only full detections find (it moves fast, or refinement loses it)
is still confirmed by its full-detection hits. While a stream has such faces waiting
(:meth:`FaceTracker.waiting_boxes`), the pipeline detects in full on every frame on which
refinement does not find them all.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from engines.detections import iou_matrix
from engines.multitask.recognizers import DLIB_STATS, ScoreStats
from stream_worker.config import TrackerConfig
from stream_worker.messages.state import PackedArray, TrackerState, TrackerTrack, pack_array, unpack_array


def _inside(box: np.ndarray, other: np.ndarray) -> float:
    """The share of ``box``'s area that lies inside ``other``."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(max(w, 0) * max(h, 0) / area) if area > 0 else 0.0


def _box_to_z(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)], dtype=np.float64)


class _Kalman:
    """Constant velocity on (cx, cy, side); noise proportional to the face's size."""

    F = np.eye(6)
    F[0, 3] = F[1, 4] = F[2, 5] = 1.0
    H = np.eye(3, 6)

    def __init__(self, z: np.ndarray) -> None:
        self.x = np.concatenate([z, np.zeros(3)])
        side = max(z[2], 1.0)
        self.P = np.diag([side / 4, side / 4, side / 8, side, side, side / 4]) ** 2

    def predict(self, steps: int) -> None:
        side = max(self.x[2], 1.0)
        q = np.diag([side / 20, side / 20, side / 40, side / 40, side / 40, side / 80]) ** 2
        for _ in range(max(steps, 1)):
            self.x = self.F @ self.x
            self.P = self.F @ self.P @ self.F.T + q
        self.x[2] = max(self.x[2], 2.0)

    def update(self, z: np.ndarray) -> None:
        r = np.diag([z[2] / 10, z[2] / 10, z[2] / 10]) ** 2
        s = self.H @ self.P @ self.H.T + r
        k = self.P @ self.H.T @ np.linalg.inv(s)
        self.x = self.x + k @ (z - self.H @ self.x)
        self.P = (np.eye(6) - k @ self.H) @ self.P

    @property
    def box(self) -> np.ndarray:
        cx, cy, side = self.x[:3]
        return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


@dataclass
class _Track:
    key: int
    kalman: _Kalman
    embedding: np.ndarray | None
    last_frame: int
    hits: int = 1
    missed: int = 0
    track_id: int | None = None


@dataclass(frozen=True)
class TrackUpdate:
    """The result of one frame."""

    track_ids: list[int | None]
    """Per face of the frame: its confirmed track id, or None (not yet confirmed)."""
    started: list[int] = field(default_factory=list)
    """Tracks confirmed on this frame."""
    ended: list[int] = field(default_factory=list)
    """Confirmed tracks that ended (missed too long) on this frame."""


class FaceTracker:
    """Tracks the faces of one stream. Not thread-safe: one instance per stream."""

    def __init__(self, config: TrackerConfig | None = None, stats: ScoreStats = DLIB_STATS) -> None:
        """``stats``: the recognizer's score statistics; appearance is scored between its
        impostor and genuine means, and the cosine gates not set in ``config`` come from it."""
        self.config = config or TrackerConfig()
        self._different, self._same = stats.impostor_mean, stats.genuine_mean
        given = self.config.min_cosine, self.config.reacquire_cosine
        self.min_cosine = given[0] if given[0] is not None else stats.track_min_cosine
        self.reacquire_cosine = given[1] if given[1] is not None else stats.track_reacquire_cosine
        self.reset()

    def __deepcopy__(self, memo: dict[int, Any]) -> FaceTracker:
        """A copy for the pipeline's per-step snapshot (the configuration is shared; a track's
        embedding is replaced, never changed in place, so it is shared too)."""
        new = copy.copy(self)
        new._tracks = []
        for track in self._tracks:
            kalman = _Kalman.__new__(_Kalman)
            kalman.x, kalman.P = track.kalman.x.copy(), track.kalman.P.copy()
            new._tracks.append(dataclasses.replace(track, kalman=kalman))
        return new

    def reset(self) -> list[int]:
        """Forget every track; returns the confirmed ones that were alive (now ended)."""
        alive = [t.track_id for t in getattr(self, "_tracks", []) if t.track_id is not None]
        self._tracks: list[_Track] = []
        self._next_key = 0
        self._next_id = 1
        self._frame = -1
        return alive

    @property
    def active_ids(self) -> list[int]:
        return [t.track_id for t in self._tracks if t.track_id is not None]

    def predicted_boxes(self, frame_index: int) -> dict[int, np.ndarray]:
        """Where each live track (confirmed or not) should be on ``frame_index``, by key."""
        steps = frame_index - self._frame
        out = {}
        for track in self._tracks:
            probe = _Kalman.__new__(_Kalman)
            probe.x, probe.P = track.kalman.x.copy(), track.kalman.P.copy()
            probe.predict(steps)
            out[track.key] = probe.box
        return out

    @property
    def has_unconfirmed(self) -> bool:
        """Whether a face no confirmed track explains is waiting to be confirmed (or dropped)."""
        return bool(self.waiting_boxes(self.predicted_boxes(self._frame + 1)))

    def waiting_boxes(self, predicted: dict[int, np.ndarray]) -> list[np.ndarray]:
        """Of :meth:`predicted_boxes`' output, the boxes of the faces waiting to be confirmed
        that no confirmed track explains (an unconfirmed track lying mostly, half its area or
        more, inside a confirmed track's box is a second detection on a known face: hair, a hand)."""
        confirmed = [predicted[t.key] for t in self._tracks if t.track_id is not None]
        return [predicted[t.key] for t in self._tracks
                if t.track_id is None and not any(_inside(predicted[t.key], box) >= 0.5 for box in confirmed)]

    def confirmed_predictions(self, frame_index: int) -> dict[int, np.ndarray]:
        """Where each confirmed track should be on ``frame_index``, by track id."""
        by_key = self.predicted_boxes(frame_index)
        return {t.track_id: by_key[t.key] for t in self._tracks if t.track_id is not None}

    def update(self, frame_index: int, boxes: np.ndarray, embeddings: np.ndarray | None,
               *, full: bool = True) -> TrackUpdate:
        """Match the faces of ``frame_index`` (boxes (N, 4), unit embeddings (N, D) or None;
        a NaN row: that face was not embedded, it matches on position alone).
        ``full``: the faces come from a full detection (else from refining predicted boxes)."""
        cfg = self.config
        steps = frame_index - self._frame if self._frame >= 0 else 1
        self._frame = frame_index
        for track in self._tracks:
            track.kalman.predict(steps)
        n = len(boxes)
        assignment = self._associate(np.asarray(boxes, np.float64).reshape(-1, 4), embeddings)
        track_ids: list[int | None] = [None] * n
        started: list[int] = []
        matched_tracks = set()
        for ti, di in assignment:
            track = self._tracks[ti]
            matched_tracks.add(ti)
            track.kalman.update(_box_to_z(boxes[di]))
            if embeddings is not None and np.isfinite(embeddings[di]).all():
                e = embeddings[di]
                mixed = e if track.embedding is None else cfg.embedding_momentum * track.embedding + (1 - cfg.embedding_momentum) * e
                track.embedding = mixed / np.linalg.norm(mixed)
            track.hits += 1
            track.missed = 0
            track.last_frame = frame_index
            if track.track_id is None and track.hits >= cfg.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
                started.append(track.track_id)
            track_ids[di] = track.track_id
        ended: list[int] = []
        survivors = []
        for ti, track in enumerate(self._tracks):
            confirmed = track.track_id is not None
            if ti not in matched_tracks and (confirmed or full):
                # (an unconfirmed track counts the full detections that missed it)
                track.missed += steps if confirmed else 1
            limit = cfg.max_missed_frames if confirmed else 1
            if track.missed > limit:
                if track.track_id is not None:
                    ended.append(track.track_id)
                continue
            survivors.append(track)
        self._tracks = survivors
        assigned = {di for _, di in assignment}
        for di in range(n):
            if di not in assigned:
                emb = None if embeddings is None or not np.isfinite(embeddings[di]).all() else embeddings[di]
                track = _Track(self._next_key, _Kalman(_box_to_z(boxes[di])), emb, frame_index)
                self._next_key += 1
                if cfg.min_hits <= 1:
                    track.track_id = self._next_id
                    self._next_id += 1
                    started.append(track.track_id)
                    track_ids[di] = track.track_id
                self._tracks.append(track)
        return TrackUpdate(track_ids, started, ended)

    def to_state(self) -> TrackerState:
        """Everything the tracker knows (see :mod:`stream_worker.messages.state`)."""
        return TrackerState(next_key=self._next_key, next_id=self._next_id, frame=self._frame, tracks=tuple(
            TrackerTrack(key=t.key, x=PackedArray.pack(t.kalman.x), P=PackedArray.pack(t.kalman.P),
                         embedding=pack_array(t.embedding), last_frame=t.last_frame, hits=t.hits, missed=t.missed,
                         track_id=t.track_id)
            for t in self._tracks
        ))

    def restore(self, state: TrackerState) -> None:
        """Continue from :meth:`to_state`'s output."""
        self._next_key, self._next_id, self._frame = state.next_key, state.next_id, state.frame
        self._tracks = []
        for t in state.tracks:
            kalman = _Kalman.__new__(_Kalman)
            kalman.x, kalman.P = t.x.unpack(), t.P.unpack()
            self._tracks.append(_Track(t.key, kalman, unpack_array(t.embedding), t.last_frame, t.hits, t.missed,
                                       t.track_id))

    def continue_ids_from(self, next_id: int) -> None:
        """Start fresh, but never reuse a track id already given out on this stream."""
        self.reset()
        self._next_id = next_id

    @property
    def next_id(self) -> int:
        return self._next_id

    def _associate(self, boxes: np.ndarray, embeddings: np.ndarray | None) -> list[tuple[int, int]]:
        cfg = self.config
        if not self._tracks or not len(boxes):
            return []
        predicted = np.array([t.kalman.box for t in self._tracks])
        overlap = iou_matrix(predicted, boxes)
        sides = predicted[:, 2] - predicted[:, 0]
        centres = (predicted[:, :2] + predicted[:, 2:]) / 2
        det_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        distance = np.linalg.norm(centres[:, None] - det_centres[None], axis=2) / np.maximum(sides[:, None], 1.0)
        det_sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        ratio = np.maximum(sides[:, None], 1.0) / np.maximum(det_sides[None], 1.0)
        plausible_size = (ratio <= cfg.max_size_ratio) & (ratio >= 1 / cfg.max_size_ratio)
        appearance = np.full(overlap.shape, 0.5)
        cosine = np.ones(overlap.shape)
        known = np.zeros(overlap.shape, bool)
        if embeddings is not None:
            embedded = np.isfinite(embeddings).all(axis=1)
            for ti, track in enumerate(self._tracks):
                if track.embedding is not None:
                    cosine[ti, embedded] = embeddings[embedded] @ track.embedding
                    appearance[ti, embedded] = np.clip(
                        (cosine[ti, embedded] - self._different) / (self._same - self._different), 0, 1)
                    known[ti] = embedded
        reacquire = known & (cosine >= self.reacquire_cosine) & (distance <= cfg.reacquire_distance)
        allowed = ((overlap >= cfg.min_iou) | reacquire) & plausible_size & (cosine >= self.min_cosine)
        weight = np.where(known, cfg.appearance_weight, 0.0)
        cost = 1.0 - ((1 - weight) * overlap + weight * appearance)
        cost[~allowed] = 1e6
        rows, cols = linear_sum_assignment(cost)
        return [(r, c) for r, c in zip(rows, cols) if allowed[r, c]]
