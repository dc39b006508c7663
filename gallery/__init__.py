"""FaceStream gallery: identities and face templates in SQLite, searched with FAISS.

:class:`gallery.gallery.Gallery` works on embeddings; :class:`gallery.enrol.PhotoEnroller`
enrols and searches photos with an embedder passed in (see ``stream_worker.photos``).
"""

from gallery.calibration import Calibration, calibrate
from gallery.enrol import EnrolPolicy, FaceSample, PhotoEnroller
from gallery.errors import EnrolmentRefusedError, GalleryCorruptError, GalleryError, IdentityNotFoundError
from gallery.gallery import Gallery, Match
from gallery.index import IndexConfig

__all__ = [
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
