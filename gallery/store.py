"""The gallery's source of truth: identities and face templates in SQLite.

One file; WAL journal, full sync, foreign keys. Every change runs in one transaction that
also bumps a *generation* counter, so a FAISS index built from the store can tell whether
it is still current. Embeddings are stored as little-endian float32 blobs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engines.fileio import fsync_dir
from gallery import validation as valid
from gallery.chips import FaceChip
from gallery.errors import GalleryCorruptError, GalleryError, IdentityNotFoundError

SCHEMA_VERSION = 2
"""2 added ``chips`` (a version 1 gallery is upgraded in place when opened)."""
APPLICATION_ID = 0x46534731  # "FSG1": marks a FaceStream gallery file

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    updated_utc TEXT NOT NULL
);
CREATE TABLE templates (
    template_id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    embedding BLOB NOT NULL,
    image_sha256 TEXT,
    quality REAL,
    enrolled_utc TEXT NOT NULL
);
CREATE INDEX templates_by_model ON templates(model, template_id);
CREATE INDEX templates_by_identity ON templates(identity_id);
CREATE UNIQUE INDEX templates_by_image ON templates(model, image_sha256) WHERE image_sha256 IS NOT NULL;
CREATE TABLE erasures (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id TEXT NOT NULL,
    templates_removed INTEGER NOT NULL,
    erased_utc TEXT NOT NULL
);
CREATE TABLE thresholds (
    model TEXT PRIMARY KEY,
    similarity REAL NOT NULL,
    calibration TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
"""
_CHIPS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chips (
        chip_id INTEGER PRIMARY KEY AUTOINCREMENT,
        identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        image_sha256 TEXT NOT NULL,
        jpeg BLOB NOT NULL,
        geometry TEXT NOT NULL,
        quality REAL,
        created_utc TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS chips_by_image ON chips(identity_id, image_sha256)",
)
"""Schema version 2: the face chips (a version 1 gallery gets them when opened)."""
_SCHEMA += "".join(f"{statement};\n" for statement in _CHIPS_SCHEMA)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Identity:
    id: str
    name: str
    metadata: dict[str, Any]
    created_utc: str
    updated_utc: str
    templates: dict[str, int] = field(default_factory=dict)
    """Number of templates per embedding model."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "metadata": self.metadata,
            "created_utc": self.created_utc, "updated_utc": self.updated_utc, "templates": self.templates,
        }


@dataclass(frozen=True)
class Template:
    template_id: int
    identity_id: str
    model: str
    embedding: np.ndarray
    image_sha256: str | None
    quality: float | None
    enrolled_utc: str


@dataclass(frozen=True)
class StoredChip:
    chip_id: int
    identity_id: str
    image_sha256: str
    chip: FaceChip
    quality: float | None
    models: frozenset[str]
    """Embedding models with a template made from this chip's photo."""


@dataclass(frozen=True)
class Erasure:
    """A removal, recorded without any biometric data."""

    event_id: int
    identity_id: str
    templates_removed: int
    erased_utc: str


class GalleryStore:
    """Identities, templates, erasure events and calibrated thresholds in one SQLite file."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.last_write: tuple[int, int] = (-1, -1)
        """Generation before and after this connection's last write (another process may
        write to the same file between two of ours)."""
        existed = self.path.exists()
        if not existed and not create:
            raise GalleryCorruptError(f"{self.path}: no gallery database here (enrol someone to create one, or name "
                                      "the right file)")
        if existed and not self.path.is_file():
            raise GalleryCorruptError(f"{self.path}: not a file; name the gallery database file")
        if existed and self.path.stat().st_size == 0:
            raise GalleryCorruptError(
                f"{self.path}: the file is empty (0 bytes), not a gallery. If it held identities, restore it from a "
                "backup (`facestream gallery import`); to start a new gallery, remove the empty file or name a new one. "
                "Nothing was changed."
            )
        if not existed:
            self._create()
        with self._errors("open"):
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                self._init_schema()  # first, read only: a file that is not a gallery is left exactly as it was
            except BaseException:
                self._db.close()
                raise
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")  # erased embeddings are overwritten, not left in free pages
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
        if int(self._meta("schema_version")) < SCHEMA_VERSION:
            with self._transaction() as db:  # version 1 -> 2 (IF NOT EXISTS: another process may be first)
                for statement in _CHIPS_SCHEMA:
                    db.execute(statement)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    # --- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise GalleryCorruptError(
                f"{self.path}: the gallery database cannot be read ({action}: {exc}). Restore it from a "
                "backup (`facestream gallery export` writes one) or move it away to start a new gallery."
            ) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = int(self._meta("generation"))
                yield self._db
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self._db.execute("COMMIT")
                self.last_write = (before, before + 1)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _create(self) -> None:
        """A new, empty gallery, built aside and linked into place: a crash leaves no gallery
        or a complete one, never a half-made file that a later open would take for damage."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        aside = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with self._errors("create"):
                db = sqlite3.connect(aside, isolation_level=None)
                try:
                    db.execute("PRAGMA journal_mode = WAL")
                    db.executescript(
                        f"BEGIN IMMEDIATE; {_SCHEMA}"
                        f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('generation', '0'), "
                        f"('created_utc', '{utc_now()}'); PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
                    )
                finally:
                    db.close()  # (the last connection checkpoints the WAL into the file)
            with aside.open("rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(aside, self.path)  # never replaces: another process may have created it meanwhile
            except FileExistsError:
                pass
            fsync_dir(self.path.parent)
        finally:
            aside.unlink(missing_ok=True)

    def _init_schema(self) -> None:
        (app_id,) = self._db.execute("PRAGMA application_id").fetchone()
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            raise GalleryCorruptError(f"{self.path}: an SQLite database without a FaceStream gallery in it; name "
                                      "another file (nothing was changed)")
        if app_id != APPLICATION_ID or "meta" not in tables:
            raise GalleryCorruptError(f"{self.path}: an SQLite database, but not a FaceStream gallery")
        version = int(self._meta("schema_version"))
        if version not in (1, SCHEMA_VERSION):
            raise GalleryCorruptError(
                f"{self.path}: gallery schema version {version}; this FaceStream reads version {SCHEMA_VERSION}"
            )

    def _meta(self, key: str) -> str:
        with self._errors("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise GalleryCorruptError(f"{self.path}: gallery metadata '{key}' is missing")
        return str(row[0])

    @property
    def generation(self) -> int:
        """Increases with every committed change."""
        return int(self._meta("generation"))

    def close(self) -> None:
        self._db.close()

    # --- identities ----------------------------------------------------------------------

    def upsert_identity(self, identity_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None) -> Identity:
        identity_id = valid.identity_id(identity_id)
        with self._transaction() as db:
            self._upsert(db, identity_id, name, metadata)
        return self.identity(identity_id)

    @staticmethod
    def _upsert(db: sqlite3.Connection, identity_id: str, name: str | None, metadata: dict[str, Any] | None) -> None:
        identity_id = valid.identity_id(identity_id)
        name = None if name is None else valid.display_name(name)
        metadata = None if metadata is None else valid.metadata(metadata)
        now = utc_now()
        row = db.execute("SELECT name, metadata FROM identities WHERE id = ?", (identity_id,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?)",
                (identity_id, name or identity_id, json.dumps(metadata or {}), now, now),
            )
        elif name is not None or metadata is not None:
            db.execute(
                "UPDATE identities SET name = ?, metadata = ?, updated_utc = ? WHERE id = ?",
                (name if name is not None else row[0],
                 json.dumps(metadata) if metadata is not None else row[1], now, identity_id),
            )

    def identity(self, identity_id: str) -> Identity:
        with self._errors("read"):
            row = self._db.execute("SELECT * FROM identities WHERE id = ?", (identity_id,)).fetchone()
            if row is None:
                raise IdentityNotFoundError(f"no identity '{identity_id}' in {self.path}")
            counts = dict(self._db.execute(
                "SELECT model, COUNT(*) FROM templates WHERE identity_id = ? GROUP BY model", (identity_id,)
            ).fetchall())
        return Identity(row[0], row[1], json.loads(row[2]), row[3], row[4], counts)

    def identities(self) -> list[Identity]:
        with self._errors("read"):
            rows = self._db.execute("SELECT * FROM identities ORDER BY id").fetchall()
            counts: dict[str, dict[str, int]] = {}
            for identity_id, model, count in self._db.execute(
                "SELECT identity_id, model, COUNT(*) FROM templates GROUP BY identity_id, model"
            ):
                counts.setdefault(identity_id, {})[model] = count
        return [Identity(r[0], r[1], json.loads(r[2]), r[3], r[4], counts.get(r[0], {})) for r in rows]

    def names(self) -> dict[str, str]:
        with self._errors("read"):
            return dict(self._db.execute("SELECT id, name FROM identities").fetchall())

    # --- templates -----------------------------------------------------------------------

    def find_image(self, model: str, image_sha256: str) -> str | None:
        """The identity that already has a template from this image for this model."""
        with self._errors("read"):
            row = self._db.execute(
                "SELECT identity_id FROM templates WHERE model = ? AND image_sha256 = ?", (model, image_sha256)
            ).fetchone()
        return None if row is None else str(row[0])

    def add_templates(
        self,
        identity_id: str,
        model: str,
        embeddings: np.ndarray,
        *,
        image_sha256: Sequence[str | None] | None = None,
        quality: Sequence[float | None] | None = None,
        create: bool = False,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        chips: Sequence[FaceChip | None] | None = None,
    ) -> list[int]:
        """Add templates to an identity in one transaction; returns their ids. With ``create``,
        the identity is created (or its name/metadata updated) in the same transaction, so a
        crash never leaves an identity without the templates it was created for. A template
        with an image hash keeps its face chip (``chips``), once per identity and image."""
        identity_id = valid.identity_id(identity_id)
        embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
        n = len(embeddings)
        hashes = list(image_sha256) if image_sha256 is not None else [None] * n
        qualities = list(quality) if quality is not None else [None] * n
        face_chips = list(chips) if chips is not None else [None] * n
        now = utc_now()
        ids = []
        with self._transaction() as db:
            if create:
                self._upsert(db, identity_id, name, metadata)
            elif db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                raise IdentityNotFoundError(f"no identity '{identity_id}' in {self.path}")
            for vector, digest, q, chip in zip(embeddings, hashes, qualities, face_chips):
                cursor = db.execute(
                    "INSERT INTO templates (identity_id, model, embedding, image_sha256, quality, enrolled_utc) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (identity_id, model, vector.tobytes(), digest, q, now),
                )
                ids.append(int(cursor.lastrowid))  # type: ignore[arg-type]
                if chip is not None and digest:
                    db.execute(
                        "INSERT OR IGNORE INTO chips (identity_id, image_sha256, jpeg, geometry, quality, created_utc) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (identity_id, digest, chip.jpeg, chip.geometry_json(), q, now),
                    )
            db.execute("UPDATE identities SET updated_utc = ? WHERE id = ?", (now, identity_id))
        return ids

    def import_all(
        self,
        identities: Sequence[tuple[str, str, dict[str, Any]]],
        templates: Sequence[tuple[int, str, str, np.ndarray, str | None, float | None]],
    ) -> tuple[int, int]:
        """Identities ``(id, name, metadata)`` and templates ``(line, identity id, model,
        embedding, image sha256, quality)`` in one transaction: all or nothing. Templates
        whose image is already enrolled for their model are skipped. Returns (added, skipped)."""
        added = skipped = 0
        now = utc_now()
        with self._transaction() as db:
            for identity_id, name, metadata in identities:
                self._upsert(db, identity_id, name, metadata)
            for line, identity_id, model, vector, digest, quality in templates:
                if db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                    raise GalleryError(f"import line {line}: a template of identity '{identity_id}', which is neither "
                                       "in the file nor in the gallery (nothing was imported)")
                if digest and db.execute("SELECT 1 FROM templates WHERE model = ? AND image_sha256 = ?",
                                         (model, digest)).fetchone() is not None:
                    skipped += 1
                    continue
                db.execute(
                    "INSERT INTO templates (identity_id, model, embedding, image_sha256, quality, enrolled_utc) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (identity_id, model, np.ascontiguousarray(vector, "<f4").tobytes(), digest, quality, now),
                )
                added += 1
        return added, skipped

    def templates(self, model: str, *, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All templates of one model: (template ids int64, identity ids object, embeddings (n, dim))."""
        with self._errors("read"):
            rows = self._db.execute(
                "SELECT template_id, identity_id, embedding FROM templates WHERE model = ? ORDER BY template_id",
                (model,),
            ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        owners = np.array([r[1] for r in rows], dtype=object)
        blob = b"".join(r[2] for r in rows)
        if len(blob) != len(rows) * dim * 4:
            raise GalleryCorruptError(f"{self.path}: stored embeddings of model {model} are not {dim}-dimensional")
        return ids, owners, np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).copy()

    def iter_templates(self) -> Iterator[Template]:
        with self._errors("read"):
            for r in self._db.execute("SELECT * FROM templates ORDER BY template_id"):
                yield Template(r[0], r[1], r[2], np.frombuffer(r[3], dtype="<f4").copy(), r[4], r[5], r[6])

    def chips(self) -> Iterator[StoredChip]:
        """Every stored face chip, oldest first, with the models that have a template of it."""
        with self._errors("read"):
            rows = self._db.execute(
                "SELECT c.chip_id, c.identity_id, c.image_sha256, c.jpeg, c.geometry, c.quality, "
                "(SELECT group_concat(t.model, char(31)) FROM templates t "
                " WHERE t.identity_id = c.identity_id AND t.image_sha256 = c.image_sha256) "
                "FROM chips c ORDER BY c.chip_id"
            ).fetchall()
        for r in rows:
            yield StoredChip(r[0], r[1], r[2], FaceChip.from_stored(r[3], r[4]), r[5],
                             frozenset(r[6].split("\x1f")) if r[6] else frozenset())

    def chip_count(self, identity_id: str | None = None) -> int:
        with self._errors("read"):
            if identity_id is None:
                return int(self._db.execute("SELECT COUNT(*) FROM chips").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM chips WHERE identity_id = ?", (identity_id,)).fetchone()[0])

    def template_counts(self) -> dict[str, int]:
        with self._errors("read"):
            return dict(self._db.execute("SELECT model, COUNT(*) FROM templates GROUP BY model").fetchall())

    # --- erasure -------------------------------------------------------------------------

    def remove_identity(self, identity_id: str) -> tuple[Erasure, list[int]]:
        """Delete an identity and all its templates; record the erasure. Returns the event and
        the removed template ids (for the index)."""
        now = utc_now()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                raise IdentityNotFoundError(f"no identity '{identity_id}' in {self.path}")
            removed = [r[0] for r in db.execute("SELECT template_id FROM templates WHERE identity_id = ?", (identity_id,))]
            db.execute("DELETE FROM templates WHERE identity_id = ?", (identity_id,))
            db.execute("DELETE FROM chips WHERE identity_id = ?", (identity_id,))
            db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            cursor = db.execute(
                "INSERT INTO erasures (identity_id, templates_removed, erased_utc) VALUES (?, ?, ?)",
                (identity_id, len(removed), now),
            )
            event = Erasure(int(cursor.lastrowid), identity_id, len(removed), now)  # type: ignore[arg-type]
        with self._errors("vacuum"):
            # Deleted embedding bytes must not linger in free pages or the WAL.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return event, removed

    def erasures(self, after_event_id: int = 0) -> list[Erasure]:
        with self._errors("read"):
            rows = self._db.execute(
                "SELECT * FROM erasures WHERE event_id > ? ORDER BY event_id", (after_event_id,)
            ).fetchall()
        return [Erasure(*r) for r in rows]

    # --- thresholds ----------------------------------------------------------------------

    def set_threshold(self, model: str, similarity: float, calibration: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO thresholds VALUES (?, ?, ?, ?)",
                (model, float(similarity), json.dumps(calibration), utc_now()),
            )

    def threshold(self, model: str) -> tuple[float, dict[str, Any]] | None:
        with self._errors("read"):
            row = self._db.execute("SELECT similarity, calibration FROM thresholds WHERE model = ?", (model,)).fetchone()
        return None if row is None else (float(row[0]), json.loads(row[1]))
