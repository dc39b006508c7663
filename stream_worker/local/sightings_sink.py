"""Every ended track into the sightings store (``facestream run --sightings DIR``): each
``track_ended`` event, with the embeddings it carries in-process and its best shot, goes
through :class:`~stream_worker.sightings_feed.SightingsFeed` (which tracks are stored, and
their times: receive times, or a recorded file's start plus pts with ``--recorded-at``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from gallery.sightings import SightingsStore
from stream_worker.messages.results import TrackEmbeddings, TrackEnded, TrackEvent
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FrameOutput
from stream_worker.sightings_feed import SightingCounts, SightingsFeed

log = logging.getLogger(__name__)


class SightingsSink:
    """A :class:`~stream_worker.local.sinks.Sink` that stores each ended track as a sighting."""

    def __init__(self, store: SightingsStore, *, min_frames: int = 3, min_quality: float = 0.2,
                 recorded_at: dict[str, datetime] | None = None, watch_list_only: bool = False,
                 metrics: WorkerMetrics | None = None) -> None:
        self.feed = SightingsFeed(store, min_frames=min_frames, min_quality=min_quality,
                                  watch_list_only=watch_list_only, recorded_at=dict(recorded_at or {}), metrics=metrics)

    @property
    def counts(self) -> SightingCounts:
        return self.feed.counts

    def write(self, output: FrameOutput) -> None:
        self.write_events(output.frame.stream_id, output.events, output.thumbnails)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        for event in events:
            if isinstance(event, TrackEnded):
                message = TrackEmbeddings.of(event, thumbnails.get(event.track_id))
                if message is None:  # no face of the track was embedded
                    self.feed.count("too_poor")
                else:
                    self.feed.offer(message)

    def close(self) -> None:
        log.info("sightings: %s", self.counts)
