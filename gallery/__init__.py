"""FaceStream gallery: known people, their face templates, and search with a calibrated "unknown".

Contract: ``gallery`` depends on ``engines`` only, and works on embeddings (numpy arrays)
and metadata. :class:`Gallery` keeps identities and templates in SQLite (the truth) and a
FAISS index (a cache rebuilt from it); it enrols, searches top-k identities with a
decision against a calibrated threshold, and erases (record, templates and vectors).
:class:`PhotoEnroller` enrols and searches photos with an embedder passed in (see
``stream_worker.photos``); ``gallery.api`` serves the same operations over HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from gallery.calibration import Calibration, calibrate
    from gallery.config import ApiConfig, IndexConfig
    from gallery.enrol import EnrolPolicy, FaceSample, PhotoEnroller
    from gallery.errors import EnrolmentRefusedError, GalleryCorruptError, GalleryError, IdentityNotFoundError
    from gallery.gallery import Gallery, Match

__all__ = [
    "ApiConfig",
    "Calibration",
    "EnrolPolicy",
    "EnrolmentRefusedError",
    "FaceSample",
    "Gallery",
    "GalleryCorruptError",
    "GalleryError",
    "IdentityNotFoundError",
    "IndexConfig",
    "Match",
    "PhotoEnroller",
    "calibrate",
]

__getattr__ = lazy_exports(__name__, {
    "ApiConfig": "gallery.config",
    "Calibration": "gallery.calibration",
    "EnrolPolicy": "gallery.enrol",
    "EnrolmentRefusedError": "gallery.errors",
    "FaceSample": "gallery.enrol",
    "Gallery": "gallery.gallery",
    "GalleryCorruptError": "gallery.errors",
    "GalleryError": "gallery.errors",
    "IdentityNotFoundError": "gallery.errors",
    "IndexConfig": "gallery.config",
    "Match": "gallery.gallery",
    "PhotoEnroller": "gallery.enrol",
    "calibrate": "gallery.calibration",
})
