"""What a track knows: smoothed age, gender, attributes and expression, identity votes, its best shot.

One :class:`TrackState` per live track, dropped when the track ends; everything in it is
bounded (age samples are a fixed-size window), so a 24/7 stream does not grow memory.

Identity is decided per track, not per frame: the gallery is searched when the track is
confirmed and whenever its best face quality improves by ``search_quality_gain``; each
search that matches adds a vote weighted by face quality and score. A track takes the
identity with the most weight; once named, it changes only when another identity's weight
reaches ``switch_ratio`` times the current one's, and the change is an event.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from gallery.gallery import Match
from stream_worker.config import IdentifyConfig
from stream_worker.messages.results import (
    AgeEstimate,
    BestShotRef,
    GenderEstimate,
    IdentityRef,
    TrackSummary,
    Vote,
    attribute_estimate,
    expression_estimate,
)
from stream_worker.messages.state import (
    BestShotState,
    PackedArray,
    ShotState,
    TrackRecord,
    VoteState,
    pack_bytes,
    unpack_bytes,
)

MAX_OTHER_SHOTS = 4
"""Embedded faces kept per track besides the best shot (for the sightings store)."""


def keep_diverse(shots: list[tuple[float, np.ndarray]], best: np.ndarray | None,
                 limit: int = MAX_OTHER_SHOTS) -> list[tuple[float, np.ndarray]]:
    """At most ``limit`` of ``shots`` (quality, unit embedding): while there are too many,
    the one most like another kept face (the best shot included) is dropped, the lower
    quality one on a tie. A track's views of a face stay as different as they were."""
    kept = list(shots)
    while len(kept) > limit:
        vectors = np.stack([v for _, v in kept])
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        nearest = sims.max(axis=1)
        if best is not None:
            nearest = np.maximum(nearest, vectors @ best)
        drop = max(range(len(kept)), key=lambda i: (round(float(nearest[i]), 6), -kept[i][0]))
        kept.pop(drop)
    return kept


@dataclass
class _Vote:
    name: str
    weight: float = 0.0
    searches: int = 0
    best_score: float = 0.0


@dataclass
class BestShot:
    frame_index: int
    box: tuple[float, float, float, float]
    quality: float
    embedding: np.ndarray
    jpeg: bytes | None = None


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


@dataclass
class TrackState:
    stream_id: str
    track_id: int
    first_frame: int
    first_pts_ms: float | None
    config: IdentifyConfig
    last_frame: int = 0
    last_pts_ms: float | None = None
    frames: int = 0
    best: BestShot | None = None
    last_analysed_frame: int = -1
    sharpness: float = 0.0
    """Sharpness of the last analysed face (for the quality of the frames between analyses)."""
    searched_quality: float = -1.0
    identity: IdentityRef | None = None
    first_utc: datetime | None = None
    last_utc: datetime | None = None
    shots: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """Up to 4 embedded faces besides the best shot (quality, embedding), kept diverse."""
    _votes: dict[str, _Vote] = field(default_factory=dict)
    _ages: deque[tuple[float, float]] = field(default_factory=deque)
    _male_weighted: float = 0.0
    _weight: float = 0.0
    _attributes: dict[str, float] = field(default_factory=dict)
    _expression: dict[str, float] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> TrackState:
        """A copy for the pipeline's per-step snapshot: the containers this state mutates
        are copied; what it only ever replaces (the identity, a frozen message; the best
        shot's embedding and JPEG) is shared. (Generic deepcopy cost 0.7 ms per frame.)"""
        new = copy.copy(self)
        new._votes = {k: copy.copy(v) for k, v in self._votes.items()}
        new._ages = deque(self._ages)
        new._attributes, new._expression = dict(self._attributes), dict(self._expression)
        new.best = copy.copy(self.best)
        new.shots = list(self.shots)
        return new

    def seen(self, frame_index: int, pts_ms: float | None, received: datetime | None = None) -> None:
        """A sighting without a fresh analysis (between scheduled analyses)."""
        self.frames += 1
        self.last_frame, self.last_pts_ms = frame_index, pts_ms
        if received is not None:
            self.first_utc = self.first_utc or received
            self.last_utc = received

    @property
    def frames_analysed(self) -> int:
        return len(self._ages)

    def due(self, frame_index: int, every: int) -> bool:
        """Whether this track's face should be analysed again on ``frame_index``."""
        return frame_index - self.last_analysed_frame >= every

    def observe(
        self, frame_index: int, pts_ms: float | None, box: np.ndarray, quality: float, age: float, male: float,
        embedding: np.ndarray | None, sharpness: float = 0.0, received: datetime | None = None,
        attributes: dict[str, float] | None = None, expression: dict[str, float] | None = None,
    ) -> bool:
        """Record one analysed sighting; True if the best shot improved (a thumbnail is due).
        Only an embedded face (``embedding`` not None) can become the best shot; one that does
        not may still be kept among the track's diverse shots."""
        self.seen(frame_index, pts_ms, received)
        self.last_analysed_frame = frame_index
        self.sharpness = sharpness
        weight = max(quality, 1e-3)
        if not math.isnan(age):  # NaN: the face was not analysed by the heads (it could not improve the best shot)
            self._ages.append((age, weight))
            while len(self._ages) > self.config.age_window:
                self._ages.popleft()
            self._male_weighted += male * weight
            self._weight += weight
            for mine, probabilities in ((self._attributes, attributes), (self._expression, expression)):
                for name, p in (probabilities or {}).items():
                    mine[name] = mine.get(name, 0.0) + p * weight
        if embedding is not None and (self.best is None or quality > self.best.quality):
            if self.best is not None:
                self._keep_shot(self.best.quality, self.best.embedding)
            self.best = BestShot(frame_index, tuple(float(v) for v in box), quality, embedding.copy())  # type: ignore[arg-type]
            return True
        if embedding is not None:
            self._keep_shot(quality, embedding)
        return False

    def _keep_shot(self, quality: float, embedding: np.ndarray) -> None:
        if quality < self.config.min_quality:
            return
        v = np.asarray(embedding, np.float32)
        self.shots = keep_diverse([*self.shots, (quality, v / np.linalg.norm(v))],
                                  None if self.best is None else self.best.embedding)

    @property
    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The best shot's embedding then the diverse others: (qualities, unit vectors)."""
        if self.best is None:
            raise ValueError("a track without an embedded face has no embeddings")
        shots = [(self.best.quality, self.best.embedding), *self.shots]
        vectors = np.stack([np.asarray(v, np.float32) for _, v in shots])
        return np.array([q for q, _ in shots], np.float32), vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def wants_search(self) -> bool:
        """Whether the gallery should be searched with the current best shot."""
        if self.best is None or self.best.quality < self.config.min_quality:
            return False
        return self.best.quality >= self.searched_quality + self.config.search_quality_gain

    def add_search(self, match: Match | None, quality: float) -> IdentityRef | None:
        """Count a search result; returns the new identity if the decision changed."""
        self.searched_quality = quality
        if match is None or match.decision != "match":
            return None
        vote = self._votes.setdefault(match.identity_id, _Vote(match.name))
        vote.weight += quality * match.score
        vote.searches += 1
        vote.best_score = max(vote.best_score, match.score)
        leader_id = max(self._votes, key=lambda i: self._votes[i].weight)
        if self.identity is not None and leader_id != self.identity.identity_id:
            current = self._votes[self.identity.identity_id].weight
            if self._votes[leader_id].weight < self.config.switch_ratio * current:
                leader_id = self.identity.identity_id
        leader = self._votes[leader_id]
        decided = IdentityRef(identity_id=leader_id, name=leader.name, score=leader.best_score, decision="match")
        changed = self.identity is None or self.identity.identity_id != leader_id
        self.identity = decided
        return decided if changed else None

    @property
    def age(self) -> tuple[float, float]:
        """Quality-weighted median age and a robust spread (1.4826 x weighted MAD)."""
        values = np.array([a for a, _ in self._ages])
        weights = np.array([w for _, w in self._ages])
        median = weighted_median(values, weights)
        spread = 1.4826 * weighted_median(np.abs(values - median), weights)
        return median, spread

    @property
    def male_probability(self) -> float:
        return self._male_weighted / self._weight if self._weight else 0.5

    @property
    def attributes(self) -> dict[str, float]:
        """Quality-weighted mean attribute probabilities over the analysed faces."""
        return {k: v / self._weight for k, v in self._attributes.items()} if self._weight else {}

    @property
    def expression(self) -> dict[str, float]:
        """Quality-weighted mean expression probabilities over the analysed faces."""
        return {k: v / self._weight for k, v in self._expression.items()} if self._weight else {}

    def forget_identity(self, identity_id: str) -> bool:
        """Drop an erased identity's votes (and the name, if it was this one); True if the
        track was named after it."""
        self._votes.pop(identity_id, None)
        if self.identity is None or self.identity.identity_id != identity_id:
            return False
        self.identity = None
        self.searched_quality = -1.0  # search again: the next decision may name someone else
        return True

    def to_state(self) -> TrackRecord:
        best = self.best
        return TrackRecord(
            stream_id=self.stream_id, track_id=self.track_id, first_frame=self.first_frame,
            first_pts_ms=self.first_pts_ms, last_frame=self.last_frame, last_pts_ms=self.last_pts_ms,
            frames=self.frames, last_analysed_frame=self.last_analysed_frame, sharpness=self.sharpness,
            searched_quality=self.searched_quality, identity=self.identity,
            best=None if best is None else BestShotState(
                frame_index=best.frame_index, box=best.box, quality=best.quality,
                embedding=PackedArray.pack(best.embedding), jpeg=pack_bytes(best.jpeg)),
            votes={k: VoteState(name=v.name, weight=v.weight, searches=v.searches, best_score=v.best_score)
                   for k, v in self._votes.items()},
            ages=tuple(self._ages), male_weighted=self._male_weighted, weight=self._weight,
            first_utc=None if self.first_utc is None else self.first_utc.isoformat(),
            last_utc=None if self.last_utc is None else self.last_utc.isoformat(),
            shots=tuple(ShotState(quality=q, embedding=PackedArray.pack(v)) for q, v in self.shots),
            attributes_weighted=dict(self._attributes), expression_weighted=dict(self._expression),
        )

    @classmethod
    def from_state(cls, state: TrackRecord, config: IdentifyConfig) -> TrackState:
        track = cls(state.stream_id, state.track_id, state.first_frame, state.first_pts_ms, config,
                    last_frame=state.last_frame, last_pts_ms=state.last_pts_ms, frames=state.frames,
                    last_analysed_frame=state.last_analysed_frame, sharpness=state.sharpness,
                    searched_quality=state.searched_quality, identity=state.identity)
        if state.best is not None:
            best = state.best
            track.best = BestShot(best.frame_index, best.box, best.quality, best.embedding.unpack(),
                                  unpack_bytes(best.jpeg))
        track._votes = {k: _Vote(v.name, v.weight, v.searches, v.best_score) for k, v in state.votes.items()}
        track._ages = deque(state.ages)
        track._male_weighted, track._weight = state.male_weighted, state.weight
        track.first_utc = None if state.first_utc is None else datetime.fromisoformat(state.first_utc)
        track.last_utc = None if state.last_utc is None else datetime.fromisoformat(state.last_utc)
        track.shots = [(s.quality, s.embedding.unpack()) for s in state.shots]
        track._attributes, track._expression = dict(state.attributes_weighted), dict(state.expression_weighted)
        return track

    def summary(self, thumbnail: str | None) -> TrackSummary:
        if self.best is None:
            raise ValueError("a track without sightings has no summary")
        age, spread = self.age
        male = self.male_probability
        votes = sorted(self._votes.items(), key=lambda item: -item[1].weight)
        return TrackSummary(
            first_frame=self.first_frame, last_frame=self.last_frame, first_pts_ms=self.first_pts_ms,
            last_pts_ms=self.last_pts_ms, frames=self.frames,
            best_shot=BestShotRef(frame_index=self.best.frame_index, box=tuple(round(v, 1) for v in self.best.box),
                                  quality=round(self.best.quality, 3), thumbnail=thumbnail),
            identity=self.identity,
            votes=tuple(Vote(identity_id=i, name=v.name, weight=round(v.weight, 4), searches=v.searches)
                        for i, v in votes),
            age=AgeEstimate(value=round(age, 1), spread=round(spread, 1)),
            gender=GenderEstimate(value="male" if male > 0.5 else "female", male_probability=round(male, 4)),
            attributes=attribute_estimate(self.attributes), expression=expression_estimate(self.expression),
            first_utc=None if self.first_utc is None else self.first_utc.isoformat(timespec="milliseconds"),
            last_utc=None if self.last_utc is None else self.last_utc.isoformat(timespec="milliseconds"),
        )
