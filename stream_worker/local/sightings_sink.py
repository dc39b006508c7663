"""Every ended track into the sightings store (``facestream run --sightings DIR``).

The sink sees each frame in stream order, so it knows when each track was first and last
seen: a live stream's frames carry the time they were received; a recorded file's frames are
placed at its recording start plus their pts when one is given (``--recorded-at ID=TIME``).
At ``track_ended`` the track becomes a sighting: its best shot's embedding, thumbnail,
smoothed age and gender, identity decision and quality. Tracks seen on fewer than
``min_frames`` frames or whose best shot is below ``min_quality`` are counted, not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gallery.sightings import Sighting, SightingsStore
from stream_worker.messages.results import TrackEnded, TrackEvent
from stream_worker.pipeline.face_pipeline import FrameOutput
from stream_worker.pipeline.frames import Frame

log = logging.getLogger(__name__)


@dataclass
class SightingCounts:
    stored: int = 0
    redelivered: int = 0
    too_short: int = 0
    too_poor: int = 0
    watch_list_only: int = 0


class SightingsSink:
    """A :class:`~stream_worker.local.sinks.Sink` that stores each ended track as a sighting."""

    def __init__(self, store: SightingsStore, space_id: str, *, min_frames: int = 3, min_quality: float = 0.2,
                 recorded_at: dict[str, datetime] | None = None, watch_list_only: bool = False) -> None:
        self.store, self.space_id = store, space_id
        self.min_frames, self.min_quality = min_frames, min_quality
        self.recorded_at = dict(recorded_at or {})
        self.watch_list_only = watch_list_only
        self.counts = SightingCounts()
        self._seen: dict[tuple[str, int], tuple[datetime, datetime]] = {}

    def _time(self, frame: Frame) -> datetime:
        start = self.recorded_at.get(frame.stream_id)
        if start is not None and frame.pts_ms is not None:
            return start + timedelta(milliseconds=frame.pts_ms)
        return frame.received

    def write(self, output: FrameOutput) -> None:
        at = self._time(output.frame)
        for face in output.result.faces:
            if face.track_id is not None:
                key = (output.frame.stream_id, face.track_id)
                first = self._seen.get(key, (at, at))[0]
                self._seen[key] = (first, at)
        self.write_events(output.frame.stream_id, output.events, output.thumbnails)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        for event in events:
            if isinstance(event, TrackEnded):
                self._store(event, thumbnails.get(event.track_id))

    def _store(self, event: TrackEnded, thumbnail: bytes | None) -> None:
        span = self._seen.pop((event.stream_id, event.track_id), None)
        summary = event.summary
        if span is None or summary.frames < self.min_frames:
            self.counts.too_short += 1
            return
        if summary.best_shot.quality < self.min_quality or not summary.embedding:
            self.counts.too_poor += 1
            return
        identity = event.identity if event.identity is not None and event.identity.decision == "match" else None
        if identity is None and self.watch_list_only:
            self.counts.watch_list_only += 1
            return
        sighting = Sighting(
            sighting_id=event.event_id, stream_id=event.stream_id, track_id=event.track_id,
            first_frame=summary.first_frame, last_frame=summary.last_frame, first_pts_ms=summary.first_pts_ms,
            last_pts_ms=summary.last_pts_ms, start_utc=span[0], end_utc=span[1], frames=summary.frames,
            quality=summary.best_shot.quality, space_id=self.space_id,
            vectors=np.asarray([summary.embedding], np.float32),
            identity_id=identity.identity_id if identity else None, identity_name=identity.name if identity else None,
            identity_score=identity.score if identity else None, age=summary.age.value, age_spread=summary.age.spread,
            male_probability=summary.gender.male_probability, thumbnail=thumbnail)
        if self.store.add(sighting):
            self.counts.stored += 1
        else:
            self.counts.redelivered += 1

    def close(self) -> None:
        log.info("sightings: %s", self.counts)
