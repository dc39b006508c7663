"""The gallery: enrol, search, remove; SQLite as the truth, a FAISS index as its cache."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.config import DEFAULT_RECOGNIZER
from engines.multitask.recognizers import RETIRED_SPACES, profile, profile_for_model, upgrade_space
from gallery import validation as valid
from gallery.chips import FaceChip
from gallery.defaults import DEFAULT_CALIBRATIONS
from gallery.errors import EnrolmentRefusedError, GalleryError
from gallery.export import EXPORT_FORMAT, ExportHeader, embedding_array, parse_export
from gallery.index import IndexConfig, TemplateIndex
from gallery.store import Erasure, GalleryStore, Identity

log = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.99
"""Cosine at or above which a new template is the same face as another identity's (refused).
Measured with the dlib embedding: the 167 same-person pairs of ``pairs.csv`` (different
photos) score at most 0.9865; one photo re-encoded as CMYK JPEG, TIFF, 16-bit PNG, JPEG at
quality 60 or at half size scores 0.9996 to 1.0 against the original."""


@dataclass(frozen=True)
class Match:
    """One identity in a search result."""

    identity_id: str
    name: str
    score: float
    """Cosine similarity of the probe with the identity's best template."""
    decision: str
    """``match`` when the score reaches the threshold, else ``unknown``."""

    def to_json(self) -> dict[str, Any]:
        return {"identity_id": self.identity_id, "name": self.name, "score": round(self.score, 4),
                "decision": self.decision}


def best_per_identity(
    scores: np.ndarray, template_ids: np.ndarray, known_ids: np.ndarray, owners: np.ndarray, k: int
) -> list[list[tuple[str, float]]]:
    """Group template hits by identity: per query, up to ``k`` (identity, best score), best first.

    ``known_ids`` is sorted and ``owners[i]`` owns template ``known_ids[i]``; hits with id -1
    or unknown ids (removed meanwhile) are skipped.
    """
    rows = np.clip(np.searchsorted(known_ids, template_ids), 0, max(len(known_ids) - 1, 0))
    valid = (template_ids >= 0) & (known_ids[rows] == template_ids)
    if template_ids.shape[1] == k:
        # One template per identity (k hits asked for k identities): nothing to merge.
        hits = owners[rows]
        return [
            [(hits[q, j], float(scores[q, j])) for j in range(k) if valid[q, j]] for q in range(len(scores))
        ]
    out = []
    for q in range(len(scores)):
        seen: dict[str, float] = {}
        for score, row, ok in zip(scores[q], rows[q], valid[q]):
            if ok:
                owner = owners[row]
                if owner not in seen:
                    seen[owner] = float(score)
                    if len(seen) == k:
                        break
        out.append(list(seen.items()))
    return out


def unit(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    if vectors.shape[1] != dim:
        raise ValueError(f"embeddings must be {dim}-dimensional, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("embeddings must be finite and non-zero")
    return vectors / norms


class Gallery:
    """Identities and their face templates, searchable by embedding. Thread-safe.

    Only templates of ``model`` are indexed and searched; identities enrolled with another
    model only are reported by :meth:`stats` as needing re-enrolment.
    """

    def __init__(
        self,
        path: Path,
        *,
        model: str | None = None,
        dim: int | None = None,
        index: IndexConfig | None = None,
        threshold: float | None = None,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        space = profile(DEFAULT_RECOGNIZER) if model is None else profile_for_model(model)
        if model is None or dim is None:
            if space is None:
                raise GalleryError(f"unknown embedding model {model!r}: give its dimension")
            model, dim = space.model_id, space.dim if dim is None else dim
        self.model = model
        self.dim = dim
        self.index_config = index or IndexConfig()
        self._lock = threading.RLock()
        self.store = GalleryStore(self.path, create=create)
        self._explicit_threshold = threshold
        self._index_path = self.path.with_name(f"{self.path.name}.{model.replace('/', '_').replace('@', '-')}.faiss")
        self._saved_generation = -1
        self._load_index()
        self._warn_retired()

    def _warn_retired(self) -> None:
        """A gallery written before SFace's space was centred is not searched until moved."""
        counts = self.store.template_counts()
        space = profile_for_model(self.model)
        for old, (target, _) in RETIRED_SPACES.items():
            if space is not None and target == self.model and counts.get(old) and not counts.get(self.model):
                log.warning("%s: its %d templates are of the retired space %s, which this FaceStream does not "
                            "search; move them with `facestream gallery reembed --model %s` (exact, no photos "
                            "needed)", self.path, counts[old], old, space.recognizer.value)

    # --- index cache ---------------------------------------------------------------------

    def _load_index(self) -> None:
        generation = self.store.generation
        self._seen_generation = generation
        tids, owners, vectors = self.store.templates(self.model, dim=self.dim)
        kind = "ivf" if len(tids) >= self.index_config.ivf_min_templates else "flat"
        loaded = TemplateIndex.load(self._index_path, self.index_config, tids, vectors)
        if loaded is not None and loaded[1].matches(self.model, generation, len(tids), kind):
            self._index = loaded[0]
            self._saved_generation = generation
        else:
            if loaded is not None:
                log.warning(
                    "index %s was built from another state of %s (%s); rebuilding it from the database",
                    self._index_path, self.path, loaded[1],
                )
            self._index = TemplateIndex.build(tids, vectors, self.dim, self.index_config)
        self._tids = tids
        self._owners = owners
        self._per_identity = Counter(owners.tolist())
        self._names = self.store.names()

    def _sync(self) -> None:
        """Reload the index if another process changed the database (a worker and
        ``facestream gallery`` sharing one file); call with the lock held."""
        if self.store.generation != self._seen_generation:
            log.info("gallery %s was changed by another process; reloading its index", self.path)
            self._load_index()

    def _wrote(self) -> bool:
        """After this object's own write: in step, unless someone else wrote just before it;
        then the index is rebuilt from the database (True)."""
        before, after = self.store.last_write
        if before != self._seen_generation:
            self._load_index()
            return True
        self._seen_generation = after
        return False

    def save(self) -> None:
        """Write the index cache if the gallery changed since it was last written."""
        with self._lock:
            generation = self.store.generation
            if generation != self._saved_generation:
                self._index.save(self._index_path, model=self.model, generation=generation)
                self._saved_generation = generation

    def close(self) -> None:
        with self._lock:
            self.save()
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- threshold -----------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        return self.threshold_source()[0]

    def threshold_source(self) -> tuple[float, str]:
        """The decision threshold and where it comes from."""
        if self._explicit_threshold is not None:
            return self._explicit_threshold, "configured"
        stored = self.store.threshold(self.model)
        if stored is not None:
            return stored[0], f"calibrated in this gallery (FMR {stored[1].get('target_fmr')})"
        default = DEFAULT_CALIBRATIONS.get(self.model)
        if default is None:
            raise GalleryError(f"no threshold for model {self.model}: run `facestream gallery calibrate`")
        return default.threshold, f"FaceStream default (FMR {default.target_fmr}, {default.method})"

    # --- enrol and remove -----------------------------------------------------------------

    def enrol(
        self,
        identity_id: str,
        embeddings: np.ndarray,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        image_sha256: Sequence[str | None] | None = None,
        quality: Sequence[float | None] | None = None,
        refuse_near_duplicates: bool = True,
        chips: Sequence[FaceChip | None] | None = None,
    ) -> list[int]:
        """Add templates (creating the identity if needed); returns the new template ids.

        A template whose image hash is already enrolled for this model is not added twice:
        skipped when it belongs to the same identity, refused when it belongs to another. A
        template whose embedding is a near-identical copy (cosine >= ``NEAR_DUPLICATE``) of
        another identity's template is refused too: the same photo re-encoded, cropped or
        converted has other bytes but the same face. (Replicas and restores, which copy
        decisions already made, pass ``refuse_near_duplicates=False``.)
        """
        identity_id = valid.identity_id(identity_id)
        vectors = unit(embeddings, self.dim)
        hashes = list(image_sha256) if image_sha256 is not None else [None] * len(vectors)
        qualities = list(quality) if quality is not None else [None] * len(vectors)
        face_chips = list(chips) if chips is not None else [None] * len(vectors)
        with self._lock:
            self._sync()
            keep = []
            for i, digest in enumerate(hashes):
                owner = self.store.find_image(self.model, digest) if digest else None
                if owner is None:
                    keep.append(i)
                elif owner != identity_id:
                    raise EnrolmentRefusedError(
                        f"this photo (sha256 {digest[:16]}...) is already enrolled for identity '{owner}'"
                    )
            if refuse_near_duplicates and keep:
                self._refuse_near_duplicates(identity_id, vectors[keep])
            if not keep:  # every photo already enrolled for this identity: update name/metadata only
                self._names[identity_id] = self.store.upsert_identity(identity_id, name=name, metadata=metadata).name
                self._wrote()
                return []
            ids = self.store.add_templates(
                identity_id, self.model, vectors[keep],
                image_sha256=[hashes[i] for i in keep], quality=[qualities[i] for i in keep],
                create=True, name=name, metadata=metadata, chips=[face_chips[i] for i in keep],
            )
            self._names[identity_id] = self.store.identity(identity_id).name
            if self._wrote():  # rebuilt from the database, these templates included
                return ids
            id_array = np.asarray(ids, np.int64)
            self._index.add(id_array, vectors[keep])
            self._tids = np.concatenate([self._tids, id_array])
            self._owners = np.concatenate([self._owners, np.array([identity_id] * len(ids), dtype=object)])
            self._per_identity[identity_id] += len(ids)
            return ids

    def _refuse_near_duplicates(self, identity_id: str, vectors: np.ndarray) -> None:
        for hits in self._nearest(vectors, k=2):
            other = next(((owner, score) for owner, score in hits if owner != identity_id), None)
            if other is not None and other[1] >= NEAR_DUPLICATE:
                raise EnrolmentRefusedError(
                    f"this face is a near-identical copy (cosine {other[1]:.4f} >= {NEAR_DUPLICATE}) of a template "
                    f"of identity '{other[0]}': the same photo, re-encoded or converted?"
                )

    def remove(self, identity_id: str) -> Erasure:
        """Erase an identity: its record, all its templates (every model) and its vectors.
        (An id stored before ids were checked can still be erased by its exact text.)"""
        try:
            identity_id = valid.identity_id(identity_id)
        except valid.InvalidInputError:
            if not any(i.id == identity_id for i in self.store.identities()):
                raise
        with self._lock:
            self._sync()
            event, removed = self.store.remove_identity(identity_id)
            removed_ids = np.asarray(removed, np.int64)
            self._index.remove(removed_ids)
            keep = ~np.isin(self._tids, removed_ids)
            self._tids, self._owners = self._tids[keep], self._owners[keep]
            self._per_identity.pop(identity_id, None)
            self._names.pop(identity_id, None)
            self._wrote()
            self.save()  # the cache must not keep erased vectors on disk either
            return event

    # --- re-embedding ----------------------------------------------------------------------

    def reembed(self, embed: Callable[[FaceChip], np.ndarray], *,
                progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """Add a template of this gallery's model for every stored face chip that has none yet
        (``embed`` maps a chip to one embedding of this model). Idempotent: run it again after
        an interruption and it continues. Returns counts: chips, added, already present."""
        chips = list(self.store.chips())
        added = present = 0
        for done, stored in enumerate(chips, 1):
            if self.model in stored.models:
                present += 1
            else:
                vector = np.asarray(embed(stored.chip), np.float32)[None]
                added += len(self.enrol(stored.identity_id, vector, image_sha256=[stored.image_sha256],
                                        quality=[stored.quality], refuse_near_duplicates=False))
            if progress is not None:
                progress(done, len(chips))
        return {"chips": len(chips), "added": added, "already_present": present, "converted": self._convert_retired()}

    def _convert_retired(self) -> int:
        """Templates of a retired space that maps exactly into this model's (SFace's raw space
        before centring; :func:`engines.multitask.recognizers.upgrade_space`), converted where
        no chip gave this model a template of the same photo: identities enrolled from vectors
        keep their templates. Idempotent."""
        sources = [old for old, (target, _) in RETIRED_SPACES.items() if target == self.model]
        templates = list(self.store.iter_templates())
        current: dict[str, list[np.ndarray]] = {}
        for t in templates:
            if t.model == self.model:
                current.setdefault(t.identity_id, []).append(t.embedding)
        converted = 0
        for t in templates:
            if t.model not in sources or (t.image_sha256 and self.store.find_image(self.model, t.image_sha256)):
                continue
            _, vector = upgrade_space(t.model, unit(t.embedding[None], RETIRED_SPACES[t.model][1]))
            if any(float(vector[0] @ v) > 0.9999 for v in current.get(t.identity_id, [])):
                continue  # converted by an earlier run
            self.enrol(t.identity_id, vector, image_sha256=[t.image_sha256], quality=[t.quality],
                       refuse_near_duplicates=False)
            current.setdefault(t.identity_id, []).append(vector[0])
            converted += 1
        return converted

    # --- search --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top-k identities per query embedding, each scored by its best template."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors = unit(queries, self.dim)
        with self._lock:
            self._sync()
            if len(self._tids) == 0:
                return [[] for _ in vectors]
            threshold = self.threshold
            return [
                [Match(owner, self._names.get(owner, owner), score, "match" if score >= threshold else "unknown")
                 for owner, score in hits]
                for hits in self._nearest(vectors, k)
            ]

    def _nearest(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per unit query, up to ``k`` (identity, best template score), best first (lock held)."""
        if len(self._tids) == 0:
            return [[] for _ in vectors]
        per_identity = max(self._per_identity.values())
        scores, ids = self._index.search(vectors, min(len(self._tids), k * per_identity))
        return best_per_identity(scores, ids, self._tids, self._owners, k)

    # --- reading -------------------------------------------------------------------------

    def identity(self, identity_id: str) -> Identity:
        return self.store.identity(valid.identity_id(identity_id))

    def identities(self) -> list[Identity]:
        return self.store.identities()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            identities = self.store.identities()
            stale = [i.id for i in identities if i.templates and self.model not in i.templates]
            threshold, source = self.threshold_source()
            return {
                "database": str(self.path),
                "model": self.model,
                "identities": len(identities),
                "templates": self.store.template_counts(),
                "searchable_templates": len(self._tids),
                "identities_needing_reenrolment": stale,
                "index": {"kind": self._index.kind, "on_gpu": self._index.on_gpu, "file": str(self._index_path)},
                "threshold": threshold,
                "threshold_source": source,
                "erasures": len(self.store.erasures()),
            }

    # --- backup --------------------------------------------------------------------------

    def export_jsonl(self) -> Iterator[str]:
        """JSON lines: a header, then one line per identity and one per template."""
        yield ExportHeader(format=EXPORT_FORMAT, dim=self.dim).model_dump_json()
        for identity in self.store.identities():
            yield json.dumps({"identity": identity.to_json()})
        for template in self.store.iter_templates():
            yield json.dumps({"template": {
                "identity_id": template.identity_id, "model": template.model,
                "embedding": [float(v) for v in template.embedding],
                "image_sha256": template.image_sha256, "quality": template.quality,
                "enrolled_utc": template.enrolled_utc,
            }})

    def import_jsonl(self, lines: Iterable[str]) -> dict[str, int]:
        """Load an export (into this or another gallery): every line is checked first, then
        everything is applied in one transaction, so a bad file changes nothing. Templates
        whose image is already enrolled are skipped."""
        parsed = parse_export(lines, self.dim)
        with self._lock:
            added, skipped = self.store.import_all(
                [(i.id, i.name, i.metadata) for i in parsed.identities],
                [(line, t.identity_id, t.model, embedding_array(t), t.image_sha256, t.quality)
                 for line, t in parsed.templates],
            )
            self._load_index()
        return {"identities": len(parsed.identities), "templates": added, "skipped": skipped}
