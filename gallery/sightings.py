"""The sightings store: every ended track the cameras saw, searchable by face.

A sighting is one ended track: its stream (camera), time span (frames, pts, UTC), best-shot
thumbnail, smoothed age and gender, identity decision, quality, and its embeddings with
their embedding-space id. The store is a folder:

- ``days/YYYY-MM-DD.sqlite``: one SQLite partition per UTC day of the sightings' start.
  Retention deletes whole partitions (files), and a time filter opens only the partitions
  it needs. Vectors are stored in the partition beside their metadata, in one transaction,
  so a crash never leaves a vector without its sighting or the reverse.
- ``store.sqlite``: the audit log (every search, naming, rejection, re-scan and erasure:
  who, when, a hash of the query image, how many results), counters (pseudonym numbers,
  partitions removed by retention), rejections ("not this person"), merges of pseudonyms
  and identities erased with their sightings.

FAISS searches each partition (an exact inner-product index, built from the partition's
vectors when first searched and kept until the partition changes). Why SQLite and not a
persisted FAISS file: one file per day holds both, atomically, and a day of a busy site
reindexes in seconds (measured: 100,000 sightings with 5 vectors each, a 322 MB file, in
2.0 s on 2 cores).

Adding is idempotent: a sighting's id is the track's ``track_ended`` event id, so a
redelivered event never makes a second sighting. Biometric data (vectors, thumbnails) lives
only in this folder; erasure uses SQLite's ``secure_delete``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

import faiss
import numpy as np

from gallery.errors import GalleryError

log = logging.getLogger(__name__)

MAX_VECTORS = 5
"""The best shot's embedding and up to 4 others per sighting."""
MAX_THUMBNAIL_BYTES = 1 << 20
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.sqlite$")
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,256}$")

_PARTITION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sightings (
        id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, track_id INTEGER NOT NULL,
        first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL, first_pts_ms REAL, last_pts_ms REAL,
        start_utc TEXT NOT NULL, end_utc TEXT NOT NULL, frames INTEGER NOT NULL, quality REAL NOT NULL,
        identity_id TEXT, identity_name TEXT, identity_score REAL,
        age REAL, age_spread REAL, male_probability REAL, space_id TEXT NOT NULL, thumbnail BLOB, pseudonym TEXT,
        traits TEXT)""",
    "CREATE INDEX IF NOT EXISTS sightings_time ON sightings (start_utc)",
    "CREATE INDEX IF NOT EXISTS sightings_pseudonym ON sightings (pseudonym)",
    "CREATE INDEX IF NOT EXISTS sightings_identity ON sightings (identity_id)",
    """CREATE TABLE IF NOT EXISTS vectors (
        sighting_id TEXT NOT NULL REFERENCES sightings(id) ON DELETE CASCADE, rank INTEGER NOT NULL,
        vector BLOB NOT NULL, PRIMARY KEY (sighting_id, rank))""",
)
_STORE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        at TEXT NOT NULL, operator TEXT NOT NULL, action TEXT NOT NULL, query_sha256 TEXT, results INTEGER NOT NULL,
        detail TEXT)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS rejections (
        pseudonym TEXT NOT NULL, identity_id TEXT NOT NULL, sighting_id TEXT NOT NULL, at TEXT NOT NULL,
        PRIMARY KEY (pseudonym, identity_id))""",
    "CREATE TABLE IF NOT EXISTS merges (pseudonym TEXT PRIMARY KEY, merged_into TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS erased (identity_id TEXT PRIMARY KEY, at TEXT NOT NULL)",
)


@cache
def space_dims() -> dict[str, int]:
    """Embedding-space id -> dimensions, of every recognizer FaceStream ships and of the
    retired spaces it upgrades exactly (:func:`engines.multitask.recognizers.upgrade_space`)."""
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    return {**{old: dim for old, (_, dim) in _retired_spaces().items()},
            **{profile(r).model_id: profile(r).dim for r in Recognizer}}


def _retired_spaces() -> dict[str, tuple[str, int]]:
    from engines.multitask.recognizers import RETIRED_SPACES

    return RETIRED_SPACES


def _upgrade(space_id: str, vectors: np.ndarray) -> tuple[str, np.ndarray]:
    from engines.multitask.recognizers import upgrade_space

    return upgrade_space(space_id, vectors)


class SightingsError(GalleryError):
    """A sightings store cannot be used as asked (a clear message; nothing was changed)."""


@dataclass(frozen=True)
class Sighting:
    """One ended track, as stored."""

    sighting_id: str
    stream_id: str
    track_id: int
    first_frame: int
    last_frame: int
    first_pts_ms: float | None
    last_pts_ms: float | None
    start_utc: datetime
    end_utc: datetime
    frames: int
    quality: float
    space_id: str
    vectors: np.ndarray = field(repr=False)
    """Unit embeddings, the best shot's first; (n, dim) float32, 1 <= n <= 5."""
    identity_id: str | None = None
    identity_name: str | None = None
    identity_score: float | None = None
    age: float | None = None
    age_spread: float | None = None
    male_probability: float | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    pseudonym: str | None = None
    """``unknown-<n>`` for a sighting without an identity (set by the store)."""
    attributes: dict[str, float] | None = None
    """The track's smoothed attribute probabilities (trained heads), by name."""
    expression: str | None = None
    """The track's most likely expression (when an expression head is shipped)."""

    def __post_init__(self) -> None:
        for name in ("sighting_id", "stream_id", "space_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID.fullmatch(value):
                raise SightingsError(f"sighting {name} {str(value)[:80]!r} is not valid (1-256 of A-Z a-z 0-9 . _ : @ -)")
        if self.start_utc.tzinfo is None or self.end_utc.tzinfo is None:
            raise SightingsError(f"sighting {self.sighting_id}: times must carry a time zone")
        if self.end_utc < self.start_utc or self.last_frame < self.first_frame or self.frames < 1:
            raise SightingsError(f"sighting {self.sighting_id}: it ends before it starts")
        v = np.asarray(self.vectors, np.float32)
        if v.ndim != 2 or not 1 <= len(v) <= MAX_VECTORS or not np.isfinite(v).all():
            raise SightingsError(f"sighting {self.sighting_id}: 1 to {MAX_VECTORS} finite embeddings are needed, "
                                 f"got shape {v.shape}")
        if self.thumbnail is not None and len(self.thumbnail) > MAX_THUMBNAIL_BYTES:
            raise SightingsError(f"sighting {self.sighting_id}: the thumbnail is over {MAX_THUMBNAIL_BYTES} bytes")
        dim = space_dims().get(self.space_id)
        if dim is None:
            raise SightingsError(f"sighting {self.sighting_id}: unknown embedding space {self.space_id!r}")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if v.shape[1] != dim or (norms < 1e-6).any():
            raise SightingsError(f"sighting {self.sighting_id}: {self.space_id} embeddings have {dim} dimensions and "
                                 f"are not zero; got {v.shape[1]}")
        space, v = _upgrade(self.space_id, v / norms)  # a track of a retired space, e.g. still in flight
        object.__setattr__(self, "space_id", space)
        object.__setattr__(self, "vectors", v)

    @property
    def day(self) -> date:
        return self.start_utc.astimezone(UTC).date()


@dataclass(frozen=True)
class SightingHit:
    sighting: Sighting
    score: float
    """Best cosine between the query and the sighting's embeddings."""
    decision: str
    """``match`` at or above the threshold, else ``unknown``."""


def parse_utc(text: str) -> datetime:
    """An ISO 8601 time with a zone (``Z`` or ``+01:00``), or a date alone (midnight UTC);
    anything else is :class:`SightingsError` (the command line and the REST API say so)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SightingsError(f"{text[:80]!r} is not an ISO 8601 time (e.g. 2026-11-29T10:00:00Z)") from None
    if value.tzinfo is None:
        if len(text) == 10:  # a date alone: that day from midnight UTC
            return value.replace(tzinfo=UTC)
        raise SightingsError(f"{text[:80]!r} has no time zone (give Z for UTC, or e.g. +01:00)")
    return value


def hit_json(hit: SightingHit, *, thumbnail: bool = False) -> dict[str, object]:
    """A search hit as the command and the REST API print it."""
    s = hit.sighting
    out: dict[str, object] = {
        "sighting_id": s.sighting_id, "camera": s.stream_id, "track_id": s.track_id, "score": round(hit.score, 4),
        "decision": hit.decision, "start_utc": s.start_utc.isoformat(), "end_utc": s.end_utc.isoformat(),
        "first_frame": s.first_frame, "last_frame": s.last_frame, "first_pts_ms": s.first_pts_ms,
        "last_pts_ms": s.last_pts_ms, "frames": s.frames, "quality": s.quality,
        "identity": None if s.identity_id is None else {"id": s.identity_id, "name": s.identity_name,
                                                        "score": s.identity_score},
        "pseudonym": s.pseudonym, "age": s.age, "male_probability": s.male_probability,
        "attributes": s.attributes, "expression": s.expression,
    }
    if thumbnail and s.thumbnail is not None:
        out["thumbnail_jpeg_base64"] = base64.b64encode(s.thumbnail).decode()
    return out


def search_result(store: SightingsStore, hits: list[SightingHit], *, space_id: str, threshold: float,
                  thumbnails: bool = False) -> dict[str, object]:
    """Visits (matching sightings grouped per camera) and every hit, as JSON."""
    return {
        "space_id": space_id, "threshold": threshold,
        "visits": [{"camera": v.stream_id, "start_utc": v.start_utc.isoformat(), "end_utc": v.end_utc.isoformat(),
                    "score": round(v.score, 4), "sightings": [h.sighting.sighting_id for h in v.hits]}
                   for v in store.visits(hits)],
        "hits": [hit_json(h, thumbnail=thumbnails) for h in hits],
    }


@dataclass(frozen=True)
class Visit:
    """Consecutive sightings of one person on one camera (gaps under the store's visit gap)."""

    stream_id: str
    start_utc: datetime
    end_utc: datetime
    score: float
    hits: tuple[SightingHit, ...]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse_day(name: str) -> date | None:
    m = _DAY_FILE.match(name)
    if m is None:
        return None
    try:
        return date.fromisoformat(m.group(1))
    except ValueError:
        return None


class _Partition:
    """One day's sightings, with its FAISS index built on first search."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("foreign_keys = ON", "secure_delete = ON", "journal_mode = WAL", "synchronous = FULL"):
            self._db.execute(f"PRAGMA {pragma}")
        for statement in _PARTITION_SCHEMA:
            self._db.execute(statement)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(sightings)")}
        if "traits" not in columns:  # a partition written before the trained heads
            self._db.execute("ALTER TABLE sightings ADD COLUMN traits TEXT")
        self._upgrade_spaces()
        self._index: dict[str, tuple[faiss.IndexFlatIP, np.ndarray]] = {}

    def _upgrade_spaces(self) -> None:
        """Vectors of a retired embedding space (written before SFace's space was centred)
        mapped exactly into the space that replaced it, in one transaction."""
        retired = [space for (space,) in self._db.execute("SELECT DISTINCT space_id FROM sightings")
                   if space in _retired_spaces()]
        if not retired:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for space in retired:
                rows = self._db.execute(
                    "SELECT v.sighting_id, v.rank, v.vector FROM vectors v JOIN sightings s ON s.id = v.sighting_id "
                    "WHERE s.space_id = ?", (space,)).fetchall()
                target = _retired_spaces()[space][0]
                if rows:
                    target, vectors = _upgrade(space, np.stack([np.frombuffer(b, np.float32) for _, _, b in rows]))
                    self._db.executemany("UPDATE vectors SET vector = ? WHERE sighting_id = ? AND rank = ?",
                                         [(v.astype(np.float32).tobytes(), sid, rank)
                                          for (sid, rank, _), v in zip(rows, vectors, strict=True)])
                self._db.execute("UPDATE sightings SET space_id = ? WHERE space_id = ?", (target, space))
                log.info("%s: %d vectors of the retired space %s moved exactly into %s", self.path, len(rows), space,
                         target)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def add(self, s: Sighting) -> bool:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO sightings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (s.sighting_id, s.stream_id, s.track_id, s.first_frame, s.last_frame, s.first_pts_ms, s.last_pts_ms,
                 _iso(s.start_utc), _iso(s.end_utc), s.frames, s.quality, s.identity_id, s.identity_name,
                 s.identity_score, s.age, s.age_spread, s.male_probability, s.space_id, s.thumbnail, s.pseudonym,
                 _traits_json(s)))
            added = cur.rowcount == 1
            if added:
                self._db.executemany("INSERT INTO vectors VALUES (?,?,?)",
                                     [(s.sighting_id, r, v.astype(np.float32).tobytes()) for r, v in enumerate(s.vectors)])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if added:
            self._index.pop(s.space_id, None)
        return added

    def has(self, sighting_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM sightings WHERE id = ?", (sighting_id,)).fetchone() is not None

    def index(self, space_id: str) -> tuple[faiss.IndexFlatIP, np.ndarray] | None:
        """The partition's vectors of one space, and the sighting id of each row."""
        if space_id not in self._index:
            rows = self._db.execute(
                "SELECT v.sighting_id, v.vector FROM vectors v JOIN sightings s ON s.id = v.sighting_id "
                "WHERE s.space_id = ? ORDER BY v.sighting_id, v.rank", (space_id,)).fetchall()
            if not rows:
                return None
            vectors = np.stack([np.frombuffer(blob, np.float32) for _, blob in rows])
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            self._index[space_id] = (index, np.array([sid for sid, _ in rows]))
        return self._index[space_id]

    def sightings(self, ids: Sequence[str]) -> list[Sighting]:
        out = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT * FROM sightings WHERE id IN ({marks})", chunk).fetchall()  # noqa: S608
            vectors: dict[str, list[np.ndarray]] = {}
            for sid, blob in self._db.execute(
                    f"SELECT sighting_id, vector FROM vectors WHERE sighting_id IN ({marks}) ORDER BY rank",  # noqa: S608
                    chunk):
                vectors.setdefault(sid, []).append(np.frombuffer(blob, np.float32))
            out += [_row_to_sighting(r, np.stack(vectors[r[0]])) for r in rows]
        return out

    def erase_identity(self, identity_id: str) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            n = self._db.execute("DELETE FROM sightings WHERE identity_id = ?", (identity_id,)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if n:
            self._index.clear()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # erased rows leave the write-ahead log too
        return n

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0])

    def pseudonyms(self, ids: Sequence[str] | None = None) -> dict[str, str]:
        """Sighting id -> pseudonym, for the sightings (of ``ids``, or all) that have one."""
        if ids is None:
            return dict(self._db.execute("SELECT id, pseudonym FROM sightings WHERE pseudonym IS NOT NULL"))
        out: dict[str, str] = {}
        for chunk in _chunks(ids):
            out.update(self._db.execute(f"SELECT id, pseudonym FROM sightings WHERE pseudonym IS NOT NULL AND id IN "  # noqa: S608
                                        f"({','.join('?' * len(chunk))})", chunk))
        return out

    def member_vectors(self, pseudonym: str, space_id: str) -> list[np.ndarray]:
        return [np.frombuffer(blob, np.float32) for (blob,) in self._db.execute(
            "SELECT v.vector FROM vectors v JOIN sightings s ON s.id = v.sighting_id "
            "WHERE s.pseudonym = ? AND s.space_id = ?", (pseudonym, space_id))]

    def update(self, sql: str, args: tuple) -> int:  # type: ignore[type-arg]
        return int(self._db.execute(sql, args).rowcount)

    def rows(self, sql: str) -> list[tuple]:  # type: ignore[type-arg]
        return self._db.execute(sql).fetchall()


def _chunks(ids: Sequence[str], size: int = 500) -> Iterator[tuple[str, ...]]:
    """Ids in groups small enough for one SQL statement's parameters."""
    items = list(ids)
    for start in range(0, len(items), size):
        yield tuple(items[start:start + size])


def _traits_json(s: Sighting) -> str | None:
    if s.attributes is None and s.expression is None:
        return None
    return json.dumps({"attributes": s.attributes, "expression": s.expression}, sort_keys=True)


def _row_to_sighting(r: tuple, vectors: np.ndarray) -> Sighting:  # type: ignore[type-arg]
    traits = json.loads(r[20]) if len(r) > 20 and r[20] else {}
    return Sighting(
        sighting_id=r[0], stream_id=r[1], track_id=r[2], first_frame=r[3], last_frame=r[4], first_pts_ms=r[5],
        last_pts_ms=r[6], start_utc=datetime.fromisoformat(r[7]), end_utc=datetime.fromisoformat(r[8]), frames=r[9],
        quality=r[10], identity_id=r[11], identity_name=r[12], identity_score=r[13], age=r[14], age_spread=r[15],
        male_probability=r[16], space_id=r[17], thumbnail=r[18], pseudonym=r[19], vectors=vectors,
        attributes=traits.get("attributes"), expression=traits.get("expression"))


class SightingsStore:
    """A folder of day partitions; safe to share between threads (one lock)."""

    def __init__(self, directory: Path, *, create: bool = True, visit_gap_s: float = 60.0,
                 link_thresholds: dict[str, float] | None = None,
                 separation_thresholds: dict[str, float] | None = None, cohesion: bool = True) -> None:
        from gallery.defaults import DEFAULT_CALIBRATIONS, LINK_THRESHOLDS

        self.directory = Path(directory)
        self.link_thresholds = dict(link_thresholds or LINK_THRESHOLDS)
        """Per space: two unidentified faces scoring at least this share a pseudonym (FMR 1e-5)."""
        self.separation_thresholds = dict(separation_thresholds or
                                          {k: c.threshold for k, c in DEFAULT_CALIBRATIONS.items()})
        """Per space: two pseudonyms merge only if every cross pair of their members scores at
        least this (the watch list's FMR 1e-3 threshold), so no pair a match would refuse."""
        self.cohesion = cohesion
        """A link also needs the face's mean best score over the pseudonym's members to reach
        the separation threshold (see :meth:`_pseudonym_for`; measured in
        ``benchmarks/eval_pseudonyms.py``)."""
        if self.directory.exists() and not self.directory.is_dir():
            raise SightingsError(f"{self.directory} is a file, not a sightings store folder")
        if not self.directory.exists():
            if not create:
                raise SightingsError(f"no sightings store at {self.directory}")
            if not self.directory.parent.is_dir():
                raise SightingsError(f"{self.directory.parent} does not exist (the sightings store's parent folder)")
            self.directory.mkdir()
        (self.directory / "days").mkdir(exist_ok=True)
        self.visit_gap = timedelta(seconds=visit_gap_s)
        self._lock = threading.RLock()
        self._partitions: dict[date, _Partition] = {}
        try:
            self._store = sqlite3.connect(self.directory / "store.sqlite", isolation_level=None, check_same_thread=False)
            self._store.execute("PRAGMA journal_mode = WAL")
            for statement in _STORE_SCHEMA:
                self._store.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise SightingsError(f"{self.directory}/store.sqlite cannot be read: {exc}") from exc

    # --- partitions ---------------------------------------------------------------------------

    def days(self) -> list[date]:
        """The days that hold sightings, oldest first."""
        found = (_parse_day(p.name) for p in (self.directory / "days").iterdir())
        return sorted(d for d in found if d is not None)

    def _partition(self, day: date, *, create: bool) -> _Partition | None:
        if day not in self._partitions:
            path = self.directory / "days" / f"{day.isoformat()}.sqlite"
            if not path.exists() and not create:
                return None
            try:
                self._partitions[day] = _Partition(path)
            except sqlite3.DatabaseError as exc:
                raise SightingsError(f"{path} cannot be read ({exc}); move it away to keep the rest") from exc
        return self._partitions[day]

    def close(self) -> None:
        with self._lock:
            for p in self._partitions.values():
                p.close()
            self._partitions.clear()
            self._store.close()

    def __enter__(self) -> SightingsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------

    def add(self, sighting: Sighting) -> Sighting | None:
        """Store a sighting, as the store decides it: a track named as an identity that an
        operator rejected for the pseudonym this face links to loses that name; a sighting
        without an identity gets a pseudonym. None if one with its id is already stored (a
        redelivery)."""
        try:
            return self._add(sighting)
        except sqlite3.DatabaseError as exc:  # the disk is full, the file is damaged: the system's fault
            raise SightingsError(f"{self.directory}: the sighting {sighting.sighting_id} cannot be stored ({exc})") \
                from exc

    def _add(self, sighting: Sighting) -> Sighting | None:
        with self._lock:
            # the id decides: a redelivered event is found in any partition it may have landed in
            if any(p.has(sighting.sighting_id) for p in self._open_partitions(None, None) if p is not None):
                return None
            links = self._links(sighting.vectors, sighting.space_id)
            if sighting.identity_id is not None and self._rejected(sighting.identity_id, links, sighting.space_id):
                sighting = replace(sighting, identity_id=None, identity_name=None, identity_score=None)
            if sighting.identity_id is None:
                sighting = replace(sighting, pseudonym=self._pseudonym_for(links, sighting.space_id, sighting.vectors))
            partition = self._partition(sighting.day, create=True)
            assert partition is not None
            return sighting if partition.add(sighting) else None

    # --- pseudonyms ---------------------------------------------------------------------------

    def link_threshold(self, space_id: str) -> float:
        if space_id not in self.link_thresholds:
            raise SightingsError(f"no link threshold for embedding space {space_id}")
        return self.link_thresholds[space_id]

    def _links(self, vectors: np.ndarray, space_id: str) -> dict[str, float]:
        """Pseudonym -> the best score between ``vectors`` and any of its sightings' vectors,
        for the pseudonyms that reach the link threshold (a FAISS range search: a new face
        costs one pass over the vectors, not a load of every stranger)."""
        threshold = self.link_threshold(space_id)
        best: dict[str, float] = {}
        for partition in self._open_partitions(None, None):
            if partition is None or (built := partition.index(space_id)) is None:
                continue
            index, owners = built
            if index.d != vectors.shape[1]:
                raise SightingsError(f"embeddings of {vectors.shape[1]} dimensions, space {space_id} has {index.d}")
            _, scores, rows = index.range_search(np.ascontiguousarray(vectors, np.float32), threshold - 1e-6)
            near: dict[str, float] = {}
            for score, row in zip(scores, rows, strict=True):
                sid = str(owners[row])
                near[sid] = max(near.get(sid, -2.0), float(score))
            for sid, pseudonym in partition.pseudonyms(list(near)).items():
                best[pseudonym] = max(best.get(pseudonym, -2.0), near[sid])
        return best

    def _members(self, pseudonym: str, space_id: str) -> np.ndarray:
        """Every vector of the pseudonym's sightings in one space, (n, dim)."""
        rows = [r for p in self._open_partitions(None, None) if p is not None
                for r in p.member_vectors(pseudonym, space_id)]
        return np.stack(rows) if rows else np.empty((0, 0), np.float32)

    def _pseudonym_for(self, links: dict[str, float], space_id: str, vectors: np.ndarray) -> str:
        """The pseudonym this face links to (merging the others it links to, unless their
        members are separated), or a new one. With ``cohesion``, a link also needs the face to
        score, on average over the pseudonym's members, at least the separation threshold:
        one look-alike member is not enough to join a group (no chains of links)."""
        threshold = self.link_threshold(space_id)
        linked = sorted((p for p, score in links.items() if score >= threshold), key=lambda p: -links[p])
        separation = self.separation_thresholds.get(space_id, 1.0)
        if self.cohesion:
            linked = [p for p in linked
                      if float((self._members(p, space_id) @ vectors.T).max(axis=1).mean()) >= separation]
        if not linked:
            n = self._store.execute(
                "INSERT INTO counters VALUES ('pseudonyms', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value").fetchone()[0]
            return f"unknown-{n}"
        keep = linked[0]
        for other in linked[1:]:
            a, b = self._members(keep, space_id), self._members(other, space_id)
            if a.size and b.size and float((a @ b.T).min()) >= separation:
                self._merge(other, keep)
        return keep

    def _merge(self, old: str, into: str) -> None:
        for p in self._open_partitions(None, None):
            if p is not None:
                p.update("UPDATE sightings SET pseudonym = ? WHERE pseudonym = ?", (into, old))
        self._store.execute("INSERT OR REPLACE INTO merges VALUES (?,?,?)", (old, into, _iso(datetime.now(UTC))))
        self._store.execute("UPDATE rejections SET pseudonym = ? WHERE pseudonym = ?", (into, old))

    def _rejected(self, identity_id: str, links: dict[str, float], space_id: str) -> bool:
        """Whether the face links to a pseudonym an operator said is not ``identity_id``."""
        rejected = [r[0] for r in self._store.execute("SELECT pseudonym FROM rejections WHERE identity_id = ?",
                                                      (identity_id,))]
        return any(links.get(p, -2.0) >= self.link_threshold(space_id) for p in rejected)

    def reject(self, sighting_id: str, identity_id: str, operator: str) -> Sighting:
        """An operator says sighting ``sighting_id`` is not ``identity_id``: the sighting loses
        the name and gets a pseudonym, and that identity is never again decided for faces
        that link to the pseudonym."""
        with self._lock:
            found = self.get(sighting_id)
            if found is None:
                raise SightingsError(f"no sighting {sighting_id}")
            if found.identity_id != identity_id:
                raise SightingsError(f"sighting {sighting_id} is decided as {found.identity_id!r}, not {identity_id!r}")
            links = self._links(found.vectors, found.space_id)
            links.pop(found.pseudonym or "", None)
            pseudonym = found.pseudonym or self._pseudonym_for(links, found.space_id, found.vectors)
            for p in self._open_partitions(None, None):
                if p is not None and p.has(sighting_id):
                    p.update("UPDATE sightings SET identity_id = NULL, identity_name = NULL, identity_score = NULL, "
                             "pseudonym = ? WHERE id = ?", (pseudonym, sighting_id))
            self._store.execute("INSERT OR IGNORE INTO rejections VALUES (?,?,?,?)",
                                (pseudonym, identity_id, sighting_id, _iso(datetime.now(UTC))))
            self.audit(operator, "reject", 1, detail=f"{sighting_id} is not {identity_id}")
            return replace(found, identity_id=None, identity_name=None, identity_score=None, pseudonym=pseudonym)

    def members(self, pseudonym: str) -> list[Sighting]:
        """The sightings of a pseudonym, best quality first."""
        with self._lock:
            found = [s for p in self._open_partitions(None, None) if p is not None
                     for s in p.sightings([k for k, n in p.pseudonyms().items() if n == pseudonym])]
        if not found:
            raise SightingsError(f"no sighting has the pseudonym {pseudonym!r}")
        return sorted(found, key=lambda s: -s.quality)

    def is_rejected(self, pseudonym: str, identity_id: str) -> bool:
        return self._store.execute("SELECT 1 FROM rejections WHERE pseudonym = ? AND identity_id = ?",
                                   (pseudonym, identity_id)).fetchone() is not None

    def name(self, pseudonym: str, identity_id: str, name: str, operator: str) -> list[Sighting]:
        """Relabel every sighting of ``pseudonym`` as ``identity_id`` (the caller enrols the
        identity from their best shots first); the sightings, best quality first."""
        with self._lock:
            members = self.members(pseudonym)
            if self.is_rejected(pseudonym, identity_id):
                raise SightingsError(f"an operator said {pseudonym} is not {identity_id}")
            for p in self._open_partitions(None, None):
                if p is not None:
                    p.update("UPDATE sightings SET identity_id = ?, identity_name = ?, identity_score = NULL "
                             "WHERE pseudonym = ?", (identity_id, name, pseudonym))
            self.audit(operator, "name", len(members), detail=f"{pseudonym} is {identity_id}")
            return [replace(s, identity_id=identity_id, identity_name=name, identity_score=None) for s in members]

    def _open_partitions(self, since: datetime | None, until: datetime | None) -> Iterator[_Partition | None]:
        # a sighting that starts the day before `since` may still be going on then
        first = (since.astimezone(UTC) - timedelta(days=1)).date() if since else None
        last = until.astimezone(UTC).date() if until else None
        for day in self.days():
            if (first is None or day >= first) and (last is None or day <= last):
                yield self._partition(day, create=False)

    # --- searching ----------------------------------------------------------------------------

    def search(self, query: np.ndarray, space_id: str, *, threshold: float, k: int = 20,
               since: datetime | None = None, until: datetime | None = None,
               cameras: Iterable[str] | None = None) -> list[SightingHit]:
        """The ``k`` sightings most like ``query`` (a unit embedding of ``space_id``), best first,
        within [``since``, ``until``] and on ``cameras``; each scored by its best embedding."""
        if k < 1 or k > 10_000:
            raise SightingsError(f"k must be 1-10000, got {k}")
        for t in (since, until):
            if t is not None and t.tzinfo is None:
                raise SightingsError("--since/--until need a time zone (e.g. 2026-11-29T10:00:00Z)")
        q = np.asarray(query, np.float32).reshape(1, -1)
        q = q / np.linalg.norm(q)
        wanted = set(cameras) if cameras else None
        hits: list[SightingHit] = []
        with self._lock:
            for partition in self._open_partitions(since, until):
                if partition is None:
                    continue
                built = partition.index(space_id)
                if built is None:
                    continue
                index, owners = built
                if index.d != q.shape[1]:
                    raise SightingsError(f"the query has {q.shape[1]} dimensions, space {space_id} has {index.d}")
                # the nearest vectors first, widened until k sightings pass the filters (or all are seen)
                wanted_vectors = min(index.ntotal, MAX_VECTORS * k * 4)
                while True:
                    scores, rows = index.search(q, wanted_vectors)
                    best: dict[str, float] = {}
                    for score, row in zip(scores[0], rows[0], strict=True):
                        if row >= 0:
                            sid = str(owners[row])
                            best[sid] = max(best.get(sid, -1.0), float(score))
                    found = []
                    for s in partition.sightings(list(best)):
                        if wanted is not None and s.stream_id not in wanted:
                            continue
                        if (since is not None and s.end_utc < since) or (until is not None and s.start_utc > until):
                            continue
                        score = best[s.sighting_id]
                        found.append(SightingHit(s, score, "match" if score >= threshold else "unknown"))
                    if len(found) >= k or wanted_vectors >= index.ntotal:
                        break
                    wanted_vectors = min(index.ntotal, wanted_vectors * 4)
                hits += found
        hits.sort(key=lambda h: (-h.score, h.sighting.start_utc))
        return hits[:k]

    def rescan(self, vectors: np.ndarray, space_id: str, *, threshold: float) -> list[SightingHit]:
        """Every stored sighting that any of ``vectors`` (a person's templates) matches at
        ``threshold``, each scored by its best pair, best first (re-scan on enrolment)."""
        best: dict[str, SightingHit] = {}
        with self._lock:
            total = sum(p.count() for p in self._open_partitions(None, None) if p is not None)
        for v in np.atleast_2d(vectors):
            for hit in self.search(v, space_id, threshold=threshold, k=max(1, min(total, 10_000))):
                sid = hit.sighting.sighting_id
                if hit.decision == "match" and (sid not in best or hit.score > best[sid].score):
                    best[sid] = hit
        return sorted(best.values(), key=lambda h: (-h.score, h.sighting.start_utc))

    def visits(self, hits: Sequence[SightingHit]) -> list[Visit]:
        """Matching hits grouped per camera into visits (consecutive sightings closer than the
        visit gap), best visit first."""
        by_camera: dict[str, list[SightingHit]] = {}
        for h in hits:
            if h.decision == "match":
                by_camera.setdefault(h.sighting.stream_id, []).append(h)
        visits: list[Visit] = []
        for camera, group in by_camera.items():
            group.sort(key=lambda h: h.sighting.start_utc)
            current: list[SightingHit] = []
            for h in group:
                if current and h.sighting.start_utc - max(c.sighting.end_utc for c in current) > self.visit_gap:
                    visits.append(_visit(camera, current))
                    current = []
                current.append(h)
            visits.append(_visit(camera, current))
        visits.sort(key=lambda v: (-v.score, v.start_utc))
        return visits

    def get(self, sighting_id: str) -> Sighting | None:
        with self._lock:
            for p in self._open_partitions(None, None):
                if p is not None and (found := p.sightings([sighting_id])):
                    return found[0]
        return None

    def ids(self) -> list[str]:
        """Every stored sighting's id, oldest day first."""
        with self._lock:
            return [r[0] for p in self._open_partitions(None, None) if p is not None
                    for r in p.rows("SELECT id FROM sightings ORDER BY start_utc")]

    def count(self) -> int:
        with self._lock:
            return sum(p.count() for p in self._open_partitions(None, None) if p is not None)

    # --- privacy ------------------------------------------------------------------------------

    def expire(self, keep_days: int, now: datetime | None = None) -> list[date]:
        """Delete whole partitions whose day is more than ``keep_days`` days before ``now``;
        the days removed."""
        if keep_days < 1:
            raise SightingsError(f"the retention period must be at least 1 day, got {keep_days}")
        cutoff = (now or datetime.now(UTC)).astimezone(UTC).date() - timedelta(days=keep_days)
        removed = []
        with self._lock:
            for day in self.days():
                if day >= cutoff:
                    continue
                partition = self._partitions.pop(day, None)
                if partition is not None:
                    partition.close()
                base = self.directory / "days" / f"{day.isoformat()}.sqlite"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{base}{suffix}").unlink(missing_ok=True)
                removed.append(day)
            if removed:
                self._store.execute(
                    "INSERT INTO counters VALUES ('partitions_expired', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (len(removed),))
        return removed

    def erase_identity(self, identity_id: str, *, remember: bool = False) -> int:
        """Remove every sighting decided as ``identity_id``; how many. With ``remember``
        (an erasure from the gallery changelog), sightings named so that arrive later (from
        before the erasure, on another topic) are refused too, until the identity is enrolled
        again (:meth:`forget_erasure`)."""
        with self._lock:
            if remember:
                self._store.execute("INSERT OR REPLACE INTO erased VALUES (?, ?)", (identity_id, _iso(datetime.now(UTC))))
            return sum(p.erase_identity(identity_id) for p in self._open_partitions(None, None) if p is not None)

    def is_erased(self, identity_id: str) -> bool:
        with self._lock:
            return self._store.execute("SELECT 1 FROM erased WHERE identity_id = ?", (identity_id,)).fetchone() is not None

    def forget_erasure(self, identity_id: str) -> None:
        with self._lock:
            self._store.execute("DELETE FROM erased WHERE identity_id = ?", (identity_id,))

    def counter(self, name: str) -> int:
        row = self._store.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def audit(self, operator: str, action: str, results: int, query: bytes | None = None, detail: str = "") -> None:
        """Record who searched (or named, rejected, erased), when, a hash of the query, and
        how many results. The query itself is never stored."""
        digest = hashlib.sha256(query).hexdigest() if query is not None else None
        with self._lock:
            self._store.execute("INSERT INTO audit VALUES (?,?,?,?,?,?)",
                                (_iso(datetime.now(UTC)), operator[:200], action, digest, results, detail[:1000]))

    def audit_log(self) -> list[dict[str, object]]:
        with closing(self._store.execute("SELECT at, operator, action, query_sha256, results, detail FROM audit "
                                         "ORDER BY rowid")) as cur:
            return [dict(zip(("at", "operator", "action", "query_sha256", "results", "detail"), r, strict=True))
                    for r in cur]


def _visit(camera: str, hits: list[SightingHit]) -> Visit:
    return Visit(camera, min(h.sighting.start_utc for h in hits), max(h.sighting.end_utc for h in hits),
                 max(h.score for h in hits), tuple(hits))
