"""The labelled face sets the heads are trained on, as one table with a mask per task.

A set is a folder with ``labels_<name>.csv`` files (the layout of
``../shared/data/face_train``; ``SOURCES.md`` there names sources and licences):

- ``labels_utkface.csv``: ``path,split,age,gender,race``;
- ``labels_celeba.csv``: ``path,split,identity,gender,attributes`` (attributes: the
  CelebA attribute names that are true, separated by ``;``);
- ``labels_fer2013.csv``: ``path,split,expression``.

Every sample gets every task's column; a task the sample's dataset does not label is
masked (-1 for classes, NaN for ages), so one network trains on all three sets at once
with a per-sample masked loss. The UTKFace ``race`` column is kept for reporting accuracy
per group only; it is never a training target or a product output.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import FaceStreamError

ATTRIBUTES = ("Eyeglasses", "Wearing_Hat", "Facial_Hair", "Mustache", "Goatee", "Bald", "Smiling",
              "Mouth_Slightly_Open", "Blurry")
"""The attribute heads, in output order. ``Facial_Hair`` is CelebA's ``No_Beard`` inverted.
Only observable facts an operator can search by; no CelebA label describing looks."""

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
GENDERS = ("female", "male")
MAX_AGE = 100
"""Ages are predicted as a distribution over 0..MAX_AGE years (older labels are clipped)."""
SETS = ("utkface", "celeba", "fer2013")
SPLITS = ("train", "val", "test")


class DataError(FaceStreamError):
    """A labelled set is missing, malformed or points outside its folder."""


@dataclass(frozen=True)
class LabelledSet:
    """One row per image; -1 / NaN where the image's dataset has no label for a task."""

    root: Path
    paths: tuple[str, ...]
    source: np.ndarray
    """Index into :data:`SETS`."""
    split: np.ndarray
    """Index into :data:`SPLITS`."""
    gender: np.ndarray
    age: np.ndarray
    attributes: np.ndarray
    """(N, len(ATTRIBUTES)) int8: 1, 0, or -1 (not labelled)."""
    expression: np.ndarray
    identity: np.ndarray
    """CelebA identity as an integer (-1 elsewhere)."""
    group: np.ndarray
    """UTKFace ethnicity group index into :attr:`groups` (-1 elsewhere); reporting only."""
    groups: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, mask: np.ndarray) -> LabelledSet:
        idx = np.flatnonzero(mask)
        return LabelledSet(
            self.root, tuple(self.paths[i] for i in idx), self.source[idx], self.split[idx], self.gender[idx],
            self.age[idx], self.attributes[idx], self.expression[idx], self.identity[idx], self.group[idx],
            self.groups,
        )

    def digest(self) -> str:
        """SHA-256 over the label files' bytes of the sets this table was read from."""
        h = hashlib.sha256()
        for name in SETS:
            f = self.root / f"labels_{name}.csv"
            if f.exists():
                h.update(f.read_bytes())
        return h.hexdigest()


def _inside(root: Path, relative: str) -> str:
    """``relative`` if it names a file below ``root`` (no absolute path, no ``..``; links
    inside the folder are the operator's own)."""
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts or "\x00" in relative:
        raise DataError(f"{relative!r} points outside {root}")
    return relative


def load(root: Path, sets: tuple[str, ...] = SETS) -> LabelledSet:
    """Read the label files of ``sets`` under ``root`` into one table."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of labelled faces")
    rows: list[tuple] = []
    identities: dict[str, int] = {}
    groups: dict[str, int] = {}
    for s, name in enumerate(SETS):
        if name not in sets:
            continue
        file = root / f"labels_{name}.csv"
        if not file.exists():
            raise DataError(f"{file} is missing (expected columns: see engines.training.data)")
        with file.open(newline="") as f:
            for line, r in enumerate(csv.DictReader(f), start=2):
                try:
                    split = SPLITS.index(r["split"])
                    attrs = np.full(len(ATTRIBUTES), -1, np.int8)
                    gender = GENDERS.index(r["gender"]) if r.get("gender") else -1
                    age, expression, identity, group = np.nan, -1, -1, -1
                    if name == "utkface":
                        age = min(float(r["age"]), float(MAX_AGE))
                        if not 0 <= age:
                            raise ValueError(f"age {r['age']}")
                        group = groups.setdefault(r["race"], len(groups))
                    elif name == "celeba":
                        true = set(filter(None, r["attributes"].split(";")))
                        for k, a in enumerate(ATTRIBUTES):
                            attrs[k] = ("No_Beard" not in true) if a == "Facial_Hair" else (a in true)
                        identity = identities.setdefault(r["identity"], len(identities))
                    else:
                        expression = EXPRESSIONS.index(r["expression"])
                    rows.append((_inside(root, r["path"]), s, split, gender, age, attrs, expression, identity, group))
                except (KeyError, ValueError, TypeError) as exc:
                    raise DataError(f"{file}, line {line}: {exc}") from exc
    if not rows:
        raise DataError(f"no labelled faces under {root} for {', '.join(sets)}")
    cols = list(zip(*rows))
    return LabelledSet(
        root, tuple(cols[0]), np.array(cols[1], np.int8), np.array(cols[2], np.int8), np.array(cols[3], np.int8),
        np.array(cols[4], np.float32), np.stack(cols[5]), np.array(cols[6], np.int8), np.array(cols[7], np.int32),
        np.array(cols[8], np.int8), tuple(groups),
    )
