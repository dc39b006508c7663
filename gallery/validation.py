"""What the gallery accepts from outside: identity ids, display names and metadata.

Identity ids are keys in the database, the REST API's paths, the Kafka changelog's keys and
the worker's output, and people compare them by eye: one rule for all of them.

- Normalised to Unicode NFC before anything compares them (``é`` typed two ways is one id).
- 1 to 128 characters, no leading or trailing space.
- No control characters (NUL, newlines, escapes), no format characters (zero-width
  spaces and joiners, bidirectional overrides that make an id read differently than it
  compares), no surrogates or private-use characters.
- No ``/`` or ``\\``, and not ``.`` or ``..``: ids never become paths, and the changelog keeps
  ``erasure/<id>`` keys for itself.

Metadata is a JSON object of at most 64 KiB, nested at most 8 deep, with finite numbers only.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from gallery.errors import GalleryError

MAX_ID_CHARS = 128
MAX_NAME_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 8
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cf": "a format character (zero-width or bidirectional)",
                       "Cs": "a surrogate", "Co": "a private-use character"}


class InvalidInputError(GalleryError, ValueError):
    """An identity id, name or metadata that the gallery refuses; the message says why."""

    skippable = True


def _printable(text: str, what: str) -> str:
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            raise InvalidInputError(f"{what} contains {_REFUSED_CATEGORIES[category]} (U+{ord(char):04X}) at "
                                    f"position {position}")
    return text


def identity_id(raw: object) -> str:
    """The identity id in its one normal form, or :class:`InvalidInputError`."""
    if not isinstance(raw, str):
        raise InvalidInputError(f"an identity id must be text, got {type(raw).__name__}")
    value = unicodedata.normalize("NFC", raw)
    if not value.strip():
        raise InvalidInputError("an identity id must not be blank")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInputError(f"an identity id has at most {MAX_ID_CHARS} characters, got {len(value)}")
    if value != value.strip():
        raise InvalidInputError(f"identity id {value!r} starts or ends with a space")
    _printable(value, f"identity id {value[:40]!r}")
    if "/" in value or "\\" in value or value in {".", ".."}:
        raise InvalidInputError(f"identity id {value!r} contains a slash or is a dot name; use letters, digits and "
                                "punctuation other than / and \\")
    return value


def display_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidInputError(f"a name must be text, got {type(raw).__name__}")
    value = unicodedata.normalize("NFC", raw)
    if not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidInputError(f"a name has 1 to {MAX_NAME_CHARS} characters and is not blank")
    return _printable(value, f"name {value[:40]!r}")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _refuse_constant(name: str) -> float:
    raise InvalidInputError(f"metadata contains {name}: JSON numbers must be finite")


def parse_metadata(text: str) -> dict[str, Any]:
    """Metadata given as JSON text (the CLI's --meta, the API's form field)."""
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInputError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels") from None
    except ValueError as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"metadata is not JSON: {exc}") from None
    return metadata(value)


def metadata(value: object) -> dict[str, Any]:
    """Metadata as a checked JSON object (already parsed)."""
    if not isinstance(value, dict):
        raise InvalidInputError("metadata must be a JSON object")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be plain JSON with finite numbers ({exc})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return value
