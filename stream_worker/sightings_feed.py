"""Ended tracks into the sightings store, the same way from a local run and from Kafka.

An ended track arrives as a :class:`~stream_worker.messages.results.TrackEmbeddings`
message: built in-process by ``facestream run --sightings``
(:mod:`stream_worker.local.sightings_sink`), or read from the embeddings topic by
``facestream sightings serve`` (:mod:`stream_worker.kafka.sightings_service`).
:class:`SightingsFeed` decides what becomes a sighting: tracks seen on fewer than
``min_frames`` frames or whose best shot is below ``min_quality`` are counted, not stored;
in watch-list-only mode so are tracks no enrolled person was named on. The sighting's id is
the ``track_ended`` event id, so a replayed message never makes a second sighting.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gallery.sightings import Sighting, SightingsError, SightingsStore
from stream_worker.messages.results import TrackEmbeddings
from stream_worker.metrics import WorkerMetrics


class BadTrackMessageError(ValueError):
    """An embeddings message that cannot be a sighting (the input's fault)."""


@dataclass
class SightingCounts:
    stored: int = 0
    redelivered: int = 0
    too_short: int = 0
    too_poor: int = 0
    watch_list_only: int = 0
    erased: int = 0
    invalid: int = 0


@dataclass
class SightingsFeed:
    store: SightingsStore
    min_frames: int = 3
    min_quality: float = 0.2
    watch_list_only: bool = False
    recorded_at: dict[str, datetime] = field(default_factory=dict)
    """Stream id -> the UTC time of pts 0 (recorded files); other streams use receive times."""
    counts: SightingCounts = field(default_factory=SightingCounts)
    metrics: WorkerMetrics | None = None
    """``facestream_sightings{outcome}`` is counted here too when given."""

    def offer(self, message: TrackEmbeddings) -> str:
        """Store (or count) one ended track; what happened: ``stored``, ``redelivered``,
        ``too_short``, ``too_poor``, ``watch_list_only`` or ``erased``. A message that cannot be a
        sighting raises :class:`BadTrackMessageError`; a store that cannot be written raises
        what it raised (the system's fault: retry, do not skip)."""
        summary = message.summary
        if summary.frames < self.min_frames:
            outcome = "too_short"
        elif summary.best_shot.quality < self.min_quality:
            outcome = "too_poor"
        elif self.watch_list_only and (message.identity is None or message.identity.decision != "match"):
            outcome = "watch_list_only"
        elif message.identity is not None and self.store.is_erased(message.identity.identity_id):
            outcome = "erased"  # named after someone erased with their sightings: never stored
        else:
            outcome = "stored" if self.store.add(self.sighting(message)) is not None else "redelivered"
        self.count(outcome)
        return outcome

    def count(self, outcome: str) -> None:
        """Count an outcome (here and, when given, in ``facestream_sightings{outcome}``)."""
        setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        if self.metrics is not None:
            self.metrics.sightings.labels(outcome).inc()

    def sighting(self, message: TrackEmbeddings) -> Sighting:
        summary = message.summary
        start, end = self._span(message)
        identity = message.identity if message.identity is not None and message.identity.decision == "match" else None
        try:
            vectors = message.vectors()
            thumbnail = None if message.thumbnail_jpeg is None else base64.b64decode(message.thumbnail_jpeg,
                                                                                     validate=True)
            return Sighting(
                sighting_id=message.event_id, stream_id=message.stream_id, track_id=message.track_id,
                first_frame=summary.first_frame, last_frame=summary.last_frame, first_pts_ms=summary.first_pts_ms,
                last_pts_ms=summary.last_pts_ms, start_utc=start, end_utc=end, frames=summary.frames,
                quality=summary.best_shot.quality, space_id=message.space_id, vectors=vectors,
                identity_id=identity.identity_id if identity else None, identity_name=identity.name if identity else None,
                identity_score=identity.score if identity else None, age=summary.age.value,
                age_spread=summary.age.spread, male_probability=summary.gender.male_probability, thumbnail=thumbnail,
                attributes=summary.attributes,
                expression=summary.expression.value if summary.expression is not None else None)
        except (ValueError, binascii.Error, SightingsError) as exc:
            self.counts.invalid += 1
            raise BadTrackMessageError(f"{message.event_id}: not a valid sighting ({exc})") from None

    def _span(self, message: TrackEmbeddings) -> tuple[datetime, datetime]:
        s = message.summary
        origin = self.recorded_at.get(message.stream_id)
        if origin is not None and s.first_pts_ms is not None and s.last_pts_ms is not None:
            return origin + timedelta(milliseconds=s.first_pts_ms), origin + timedelta(milliseconds=s.last_pts_ms)
        try:
            start = datetime.fromisoformat(s.first_utc) if s.first_utc else None
            end = datetime.fromisoformat(s.last_utc) if s.last_utc else None
        except ValueError:
            raise BadTrackMessageError(f"{message.event_id}: first_utc/last_utc are not ISO 8601 times") from None
        if start is None or end is None or start.tzinfo is None or end.tzinfo is None:
            raise BadTrackMessageError(f"{message.event_id}: the track's UTC span is missing or has no zone")
        return start.astimezone(UTC), end.astimezone(UTC)
