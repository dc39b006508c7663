"""Enrolment and search from photos, with an embedder passed in (the gallery does not
build models itself)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engines.errors import InvalidImageError
from engines.image import MAX_DECODE_PIXELS
from gallery.chips import FaceChip
from gallery.config import EnrolPolicy
from gallery.errors import EnrolmentRefusedError
from gallery.gallery import Gallery, Match


@dataclass(frozen=True)
class FaceSample:
    """One face found in a photo, as the gallery needs it."""

    embedding: np.ndarray
    quality: float
    box: tuple[float, float, float, float]
    chip: FaceChip | None = None
    """The face, upright, kept with an enrolled template (``gallery reembed`` needs it)."""


class FaceEmbedder(Protocol):
    def photo_faces(self, data: bytes, *, name: str, max_pixels: int, with_chips: bool = False) -> list[FaceSample]:
        """Every face of an encoded photo, with its embedding and quality (and, with
        ``with_chips``, its chip for storage). The photo is decoded here (refused from its
        header above ``max_pixels``), so an embedder that runs in another process receives
        the photo's bytes, not its pixels."""
        ...


@dataclass(frozen=True)
class EnrolOutcome:
    source: str
    status: str
    """``enrolled``, ``duplicate`` (this photo is already enrolled for the identity) or ``refused``."""
    reason: str | None = None
    template_id: int | None = None
    quality: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class FaceSearch:
    box: tuple[float, float, float, float]
    quality: float
    matches: list[Match]

    def to_json(self) -> dict[str, Any]:
        return {"box": [round(v, 1) for v in self.box], "quality": round(self.quality, 3),
                "matches": [m.to_json() for m in self.matches]}


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _side(box: tuple[float, float, float, float]) -> float:
    return max(box[2] - box[0], box[3] - box[1])


class PhotoEnroller:
    """Turns photos into gallery templates and searches."""

    def __init__(self, gallery: Gallery, embedder: FaceEmbedder, policy: EnrolPolicy | None = None, *,
                 max_pixels: int = MAX_DECODE_PIXELS) -> None:
        self.gallery = gallery
        self.embedder = embedder
        self.policy = policy or EnrolPolicy()
        self.max_pixels = max_pixels
        """Photos whose header declares more pixels are refused before decoding."""

    def _face_for_enrolment(self, source: str, data: bytes) -> FaceSample:
        faces = self.embedder.photo_faces(data, name=source, max_pixels=self.max_pixels, with_chips=True)
        if not faces:
            raise EnrolmentRefusedError(f"{source}: no face found")
        face = max(faces, key=lambda f: _area(f.box))
        foreground = [
            f for f in faces
            if _side(f.box) >= self.policy.background_ratio * _side(face.box) and f.quality >= 0.5 * face.quality
        ]
        if len(foreground) > 1 and not self.policy.largest_face:
            raise EnrolmentRefusedError(
                f"{source}: {len(foreground)} faces found where one was expected "
                "(use --largest-face to enrol the largest one)"
            )
        if face.quality < self.policy.min_quality:
            raise EnrolmentRefusedError(
                f"{source}: face quality {face.quality:.2f} is below the minimum {self.policy.min_quality:.2f} "
                "(too small, blurred, turned away or uncertain); use a clearer photo"
            )
        return face

    def enrol(
        self,
        identity_id: str,
        photos: Sequence[tuple[str, bytes]],
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[EnrolOutcome]:
        """Enrol each photo (source name, encoded bytes); a refused photo does not stop the others.

        The identity is created (or its name/metadata updated) only if a photo is accepted.
        """
        outcomes: list[EnrolOutcome] = []
        for source, data in photos:
            digest = hashlib.sha256(data).hexdigest()
            owner = self.gallery.store.find_image(self.gallery.model, digest)
            if owner == identity_id:
                outcomes.append(EnrolOutcome(source, "duplicate", "this photo is already enrolled"))
                continue
            try:
                if owner is not None:
                    raise EnrolmentRefusedError(f"{source}: this photo is already enrolled for identity '{owner}'")
                face = self._face_for_enrolment(source, data)
                ids = self.gallery.enrol(
                    identity_id, face.embedding[None], name=name, metadata=metadata,
                    image_sha256=[digest], quality=[face.quality], chips=[face.chip],
                )
            except (EnrolmentRefusedError, InvalidImageError) as exc:
                outcomes.append(EnrolOutcome(source, "refused", str(exc)))
                continue
            outcomes.append(EnrolOutcome(source, "enrolled", template_id=ids[0], quality=round(face.quality, 3)))
        return outcomes

    def search(self, source: str, data: bytes, k: int = 5) -> list[FaceSearch]:
        """Search every face of a photo; largest face first."""
        found = self.embedder.photo_faces(data, name=source, max_pixels=self.max_pixels)
        faces = sorted(found, key=lambda f: -_area(f.box))
        if not faces:
            return []
        results = self.gallery.search(np.stack([f.embedding for f in faces]), k=k)
        return [FaceSearch(f.box, f.quality, matches) for f, matches in zip(faces, results)]
