"""The trained task heads: gender, age, facial attributes and expression from one trunk pass.

The recognizer's graph (SFace) returns the identity embedding and a pooled trunk feature
(:mod:`engines.convert.sface`); the heads (a small ONNX graph written by ``facestream
train heads``) read ``[unit embedding, feature]`` and return probabilities. The shipped
heads live in ``engines/multitask/weights`` beside ``heads.json``, which names the trunk
they were trained on, the graph's sha256 (checked on every load), the attributes shipped
(those that reached the accuracy target on CelebA ``test``) and whether expression is.
They were trained on research-only sets (UTKFace, CelebA, FER2013; README, "Task heads");
``facestream train`` retrains them on an operator's own licensed data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import ModelStoreError, WeightFormatError
from engines.fileio import sha256_file
from engines.runtime.backend import InferenceBackend
from engines.runtime.engine import EngineRuntime

SHIPPED = Path(__file__).resolve().parent / "weights"
MANIFEST = "heads.json"
INPUT = "trunk"
OUTPUTS = ("gender", "age", "attributes", "expression")


@dataclass(frozen=True)
class HeadsManifest:
    trunk: str
    onnx: str
    sha256: str
    attributes: tuple[str, ...]
    """Every attribute output, in the graph's order."""
    shipped_attributes: tuple[str, ...]
    expressions: tuple[str, ...]
    expression_shipped: bool
    input_dim: int

    @classmethod
    def read(cls, directory: Path) -> HeadsManifest:
        try:
            raw = json.loads((directory / MANIFEST).read_text())
            return cls(raw["trunk"], raw["onnx"], raw["sha256"], tuple(raw["attributes"]),
                       tuple(raw["shipped_attributes"]), tuple(raw["expressions"]), bool(raw["expression_shipped"]),
                       int(raw["input_dim"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelStoreError(f"{directory / MANIFEST}: not a task-heads manifest: {exc}") from exc


@dataclass(frozen=True)
class HeadOutputs:
    """Per-face head outputs (N rows)."""

    male_probs: np.ndarray
    age_probs: np.ndarray
    """(N, 101): P(age = 0..100 years)."""
    attributes: np.ndarray
    """(N, len(shipped attributes)) probabilities."""
    expression: np.ndarray | None
    """(N, 7) probabilities, or None when expression is not shipped."""


AGE_YEARS = np.arange(101, dtype=np.float64)


def decode_age_years(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected age and spread (years) from distributions over 0..100 years."""
    p = probabilities.astype(np.float64)
    mean = p @ AGE_YEARS
    return mean.astype(np.float32), np.sqrt(np.maximum(p @ AGE_YEARS**2 - mean**2, 0)).astype(np.float32)


class TaskHeads:
    """The heads graph, loaded through the engine runtime. Thread-safe."""

    def __init__(self, backend: InferenceBackend, manifest: HeadsManifest) -> None:
        self.backend, self.manifest = backend, manifest
        self._keep = np.array([manifest.attributes.index(a) for a in manifest.shipped_attributes], np.int64)

    @classmethod
    def load(cls, runtime: EngineRuntime, directory: Path | None = None, *, trunk: str) -> TaskHeads:
        """Load and verify heads (the shipped ones by default) trained on ``trunk``."""
        directory = Path(directory) if directory is not None else SHIPPED
        manifest = HeadsManifest.read(directory)
        if manifest.trunk != trunk:
            raise ModelStoreError(f"the task heads in {directory} were trained on {manifest.trunk}, "
                                  f"this recognizer's trunk is {trunk}; retrain them with `facestream train heads`")
        path = directory / manifest.onnx
        if Path(manifest.onnx).name != manifest.onnx or not path.is_file():
            raise ModelStoreError(f"{path}: task-heads graph missing")
        if sha256_file(path) != manifest.sha256:
            raise WeightFormatError(f"{path} fails its sha256 check (expected {manifest.sha256})")
        return cls(runtime.load(path, name="heads"), manifest)

    def run(self, unit_embeddings: np.ndarray, features: np.ndarray) -> HeadOutputs:
        x = np.concatenate([unit_embeddings.astype(np.float32), features.astype(np.float32)], axis=1)
        if x.shape[1] != self.manifest.input_dim:
            raise ValueError(f"the heads take {self.manifest.input_dim} trunk values, got {x.shape[1]}")
        out = self.backend.run({INPUT: np.ascontiguousarray(x)})
        return HeadOutputs(out["gender"], out["age"], out["attributes"][:, self._keep],
                           out["expression"] if self.manifest.expression_shipped else None)
