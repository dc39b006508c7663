"""The identity embedding's common component (intra-representation, Cheng et al.'s MIR baseline).

Every face's SFace embedding shares a component: the mean unit embedding of many faces is
far from zero (norm 0.24). Matching on the embedding minus that mean, ``unit(unit(e) - mean)``,
raises the true-match rate at a false-match rate of 1e-3 on CelebA ``test`` from 0.917 to
0.928 (README, "Task heads", identity side), so the shipped SFace space is the centred one.

The mean ships in ``weights/sface-centre.json`` (written by ``facestream train centre``: the
mean unit embedding of the faces found in UTKFace and CelebA ``train``), and its sha256 is
part of the embedding space's id (:mod:`engines.multitask.recognizers`), so templates of
another centre are never compared with these.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import WeightFormatError

SHIPPED_CENTRE = Path(__file__).resolve().parent / "weights" / "sface-centre.json"


@dataclass(frozen=True)
class IdentityCentre:
    """The mean unit embedding of a set of faces, with where it came from."""

    trunk: str
    """The network whose embeddings were averaged (e.g. ``sface-v2``)."""
    mean: tuple[float, ...]
    faces: int
    sets: tuple[str, ...]
    split: str
    labels_sha256: str

    @property
    def vector(self) -> np.ndarray:
        return np.asarray(self.mean, np.float32)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "mean": [float(v) for v in self.mean]}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, name: str = "centre") -> IdentityCentre:
        try:
            raw: dict[str, Any] = json.loads(text)
            centre = cls(str(raw["trunk"]), tuple(float(v) for v in raw["mean"]), int(raw["faces"]),
                         tuple(str(s) for s in raw["sets"]), str(raw["split"]), str(raw["labels_sha256"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightFormatError(f"{name}: not an identity centre: {exc}") from exc
        if not centre.mean or not np.all(np.isfinite(centre.vector)) or np.linalg.norm(centre.vector) >= 1.0:
            raise WeightFormatError(f"{name}: the mean must be finite, non-empty and inside the unit ball")
        return centre


def centre_embeddings(unit_embeddings: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``unit(e - mean)`` per row of unit embeddings (NaN rows stay NaN)."""
    shifted = unit_embeddings.astype(np.float32) - mean[None, :]
    return (shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@functools.cache
def shipped_centre(sha256: str) -> np.ndarray:
    """The shipped mean, refused unless the file's sha256 is ``sha256`` (the space id names it)."""
    data = SHIPPED_CENTRE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WeightFormatError(f"{SHIPPED_CENTRE} fails its sha256 check (expected {sha256}, got {digest}); "
                                "reinstall FaceStream")
    return IdentityCentre.from_json(data.decode(), name=str(SHIPPED_CENTRE)).vector
