"""The gallery's backup format: JSON lines, read and written through typed records.

Line 1 is an :class:`ExportHeader`; every other line is an :class:`IdentityLine` or a
:class:`TemplateLine`. :func:`parse_export` checks a whole file before anything is
applied (so an import is all or nothing) and names the line of every problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from engines.config import describe_error
from gallery import validation as valid
from gallery.errors import GalleryError

EXPORT_FORMAT = "facestream-gallery-templates/1"
MAX_LINE_BYTES = 1 << 20


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExportHeader(_Record):
    format: Literal["facestream-gallery-templates/1"]
    dim: int = Field(ge=1, le=4096)


class IdentityRecord(_Record):
    id: str
    name: str
    metadata: dict[str, Any]
    created_utc: str | None = None
    updated_utc: str | None = None
    templates: dict[str, int] | None = None
    """Counts per model (informative; the template lines are what is imported)."""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return valid.identity_id(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return valid.display_name(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return valid.metadata(value)


class IdentityLine(_Record):
    identity: IdentityRecord


class TemplateRecord(_Record):
    identity_id: str
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    embedding: list[float] = Field(min_length=1, max_length=4096)
    image_sha256: Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")] | None = None
    """The source photo's sha256 (any printable key of up to 128 characters)."""
    quality: float | None = Field(None, ge=0, le=1)
    enrolled_utc: str | None = None

    @field_validator("identity_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return valid.identity_id(value)

    @field_validator("embedding")
    @classmethod
    def _unit(cls, value: list[float]) -> list[float]:
        norm = math.sqrt(sum(v * v for v in value))
        if not norm > 0:
            raise ValueError("an embedding must not be all zeros")
        return value


class TemplateLine(_Record):
    template: TemplateRecord


@dataclass(frozen=True)
class ParsedExport:
    identities: list[IdentityRecord]
    templates: list[tuple[int, TemplateRecord]]
    """(line number, template)."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _line(number: int, text: str) -> Any:
    if len(text.encode()) > MAX_LINE_BYTES:
        raise GalleryError(f"import line {number}: longer than {MAX_LINE_BYTES} bytes")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise GalleryError(f"import line {number}: nested too deeply") from None
    except ValueError as exc:
        raise GalleryError(f"import line {number}: not JSON ({exc})") from None


def _validated(model: type[_Record], number: int, value: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors()[:3])
        raise GalleryError(f"import line {number}: {problems}") from None
    except valid.InvalidInputError as exc:
        raise GalleryError(f"import line {number}: {exc}") from None


def parse_export(lines: Iterable[str], dim: int) -> ParsedExport:
    """Every line of an export, checked (shapes, ids, numbers); a :class:`GalleryError` names
    the first bad line. Nothing is applied here."""
    identities: list[IdentityRecord] = []
    templates: list[tuple[int, TemplateRecord]] = []
    header_seen = False
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        value = _line(number, text)
        if not header_seen:
            header = _validated(ExportHeader, number, value)
            if header.dim != dim:
                raise GalleryError(f"import: an export of {header.dim}-D templates; this gallery holds {dim}-D ones")
            header_seen = True
            continue
        if isinstance(value, dict) and "identity" in value:
            identities.append(_validated(IdentityLine, number, value).identity)
        elif isinstance(value, dict) and "template" in value:
            template = _validated(TemplateLine, number, value).template
            if len(template.embedding) != dim:
                raise GalleryError(f"import line {number}: a {len(template.embedding)}-D embedding; this gallery "
                                   f"holds {dim}-D ones")
            templates.append((number, template))
        else:
            raise GalleryError(f"import line {number}: neither an identity nor a template")
    if not header_seen:
        raise GalleryError(f"import: empty; expected a {EXPORT_FORMAT} export")
    return ParsedExport(identities, templates)


def embedding_array(template: TemplateRecord) -> np.ndarray:
    vector = np.asarray(template.embedding, np.float32)
    return vector / np.linalg.norm(vector)
