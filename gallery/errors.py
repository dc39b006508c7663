"""Gallery errors (see :mod:`engines.errors` for the policy attributes)."""

from __future__ import annotations

from engines.errors import FaceStreamError


class GalleryError(FaceStreamError):
    """Base class of gallery errors."""


class GalleryCorruptError(GalleryError):
    """The gallery database is damaged or not a FaceStream gallery; the message names the file."""


class IdentityNotFoundError(GalleryError, KeyError):
    """No identity with that id."""

    skippable = True

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "identity not found"


class EnrolmentRefusedError(GalleryError):
    """A photo cannot be enrolled: no face, several faces, low quality, or it belongs to
    another identity already."""

    skippable = True
