"""The multi-task face network: one call gives every detected face its identity embedding,
age, gender, head pose and quality.

Three networks share dlib's 5-point alignment and input normalisation: the dlib ResNet
embedding (150 px chip), the Cydral age net (64 px) and gender net (32 px). They stay
separate ONNX graphs rather than one fused graph: the age head is sensitive to how its
chip is resampled, and an in-graph resampling from the 150 px chip moved ages by several
years on some faces (MODELS.md, section e). Each net runs once per call over all faces of
all images passed in; the faces are split into chunks across the runtime's workers, each
chunk aligning its faces and running the three nets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.detections import FaceDetections
from engines.image import ColorOrder, normalise_pixels, to_rgb
from engines.multitask.align import FaceAligner
from engines.multitask.attributes import (
    FaceAttributes,
    decode_age,
    decode_gender,
    head_pose,
    quality_score,
    sharpness,
)
from engines.runtime.backend import BackendInfo, InferenceBackend
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import AGE, EMBEDDING, GENDER, MULTITASK, SHAPE_PREDICTOR_FILE
from engines.store.model_store import ModelStore
from engines.store.specs import ModelSpec

CHIPS = (EMBEDDING.chip, AGE.chip, GENDER.chip)


def _normalise(chips: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(K, S, S, 3) uint8 RGB -> float32 in the spec's layout and normalisation."""
    x = normalise_pixels(chips, spec.mean, spec.scale)
    if spec.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


@dataclass(frozen=True)
class _Face:
    image: int
    row: int
    """Index of the face in its image's detections."""


@dataclass(frozen=True)
class _Aligned:
    embedding_chips: np.ndarray
    age_chips: np.ndarray
    gender_chips: np.ndarray
    points: np.ndarray


@dataclass(frozen=True)
class _ChunkResult:
    descriptors: np.ndarray
    age_probs: np.ndarray
    gender_probs: np.ndarray
    laplacian: np.ndarray
    points: np.ndarray


class MultiTaskNet:
    """Embedding, age, gender, pose and quality for detected faces. Thread-safe."""

    CHUNK_FACES = 8
    """Most faces per chunk on CPU: small enough to overlap alignment with inference,
    large enough for efficient batches; fewer when that keeps every worker busy."""

    def __init__(
        self,
        embedding: InferenceBackend,
        age: InferenceBackend,
        gender: InferenceBackend,
        aligner: FaceAligner,
        *,
        runtime: EngineRuntime,
    ) -> None:
        self._embedding, self._age, self._gender = embedding, age, gender
        self._aligner = aligner
        self._runtime = runtime

    @classmethod
    def create(cls, *, runtime: EngineRuntime, store: ModelStore | None = None) -> MultiTaskNet:
        """Load the multi-task bundle from the model store (fetching it on first use)."""
        installed = (store or ModelStore()).ensure(MULTITASK)
        nets = [runtime.load(installed.path(installed.spec(s)), name=s.name) for s in (EMBEDDING, AGE, GENDER)]
        aligner = FaceAligner(installed.directory / SHAPE_PREDICTOR_FILE)
        return cls(*nets, aligner, runtime=runtime)

    @property
    def backend_info(self) -> tuple[BackendInfo, ...]:
        return (self._embedding.info, self._age.info, self._gender.info)

    def analyze(
        self,
        images: Sequence[np.ndarray],
        detections: Sequence[FaceDetections],
        *,
        color: ColorOrder | str = ColorOrder.BGR,
    ) -> list[FaceAttributes]:
        """Analyse every detected face of every image; one result per image, row i for face i.

        ``detections[k]`` must be the detector's result for ``images[k]`` (same size).
        Faces partly outside the image are analysed on black padding.
        """
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detection results")
        faces = [_Face(k, row) for k, d in enumerate(detections) for row in range(len(d))]
        if not faces:
            return [FaceAttributes.empty() for _ in images]
        rgbs = {}
        for k in {f.image for f in faces}:
            rgb = to_rgb(images[k], color)
            if (rgb.shape[1], rgb.shape[0]) != (detections[k].image_width, detections[k].image_height):
                raise ValueError(
                    f"image {k} is {rgb.shape[1]}x{rgb.shape[0]} but its detections are for "
                    f"{detections[k].image_width}x{detections[k].image_height}"
                )
            rgbs[k] = rgb
        workers = self._runtime.workers
        size = min(self.CHUNK_FACES, -(-len(faces) // workers)) if workers > 1 else len(faces)
        pending = []
        for start in range(0, len(faces), size):
            aligned = self._align(rgbs, detections, faces[start : start + size])
            pending.append(self._runtime.submit(self._infer, aligned))
        results = [p.result() for p in pending]
        merged = _ChunkResult(*(np.concatenate([getattr(r, f) for r in results]) for f in _ChunkResult.__dataclass_fields__))
        return self._decode(faces, detections, merged)

    def _align(self, rgbs: dict[int, np.ndarray], detections: Sequence[FaceDetections], faces: list[_Face]) -> _Aligned:
        chips: list[list[np.ndarray]] = [[], [], []]
        points = np.empty((len(faces), 5, 2), np.float32)
        for i, face in enumerate(faces):
            shape = self._aligner.landmarks(rgbs[face.image], detections[face.image].boxes[face.row])
            points[i] = FaceAligner.points(shape)
            for bucket, chip in zip(chips, self._aligner.chips(rgbs[face.image], shape, CHIPS)):
                bucket.append(chip)
        return _Aligned(*(np.stack(c) for c in chips), points)

    def _infer(self, aligned: _Aligned) -> _ChunkResult:
        emb = self._embedding.run({EMBEDDING.input_name: _normalise(aligned.embedding_chips, EMBEDDING)})
        age = self._age.run({AGE.input_name: _normalise(aligned.age_chips, AGE)})
        gender = self._gender.run({GENDER.input_name: _normalise(aligned.gender_chips, GENDER)})
        return _ChunkResult(
            descriptors=emb["descriptor"],
            age_probs=age["probabilities"],
            gender_probs=gender["probabilities"],
            laplacian=sharpness(aligned.embedding_chips),
            points=aligned.points,
        )

    @staticmethod
    def _decode(
        faces: list[_Face], detections: Sequence[FaceDetections], merged: _ChunkResult
    ) -> list[FaceAttributes]:
        """Raw outputs of all faces -> one FaceAttributes per image (vectorised over faces)."""
        norms = np.linalg.norm(merged.descriptors, axis=1)
        embeddings = merged.descriptors / np.maximum(norms, 1e-12)[:, None]
        ages, age_stds = decode_age(merged.age_probs)
        male = decode_gender(merged.gender_probs)
        owner = np.array([f.image for f in faces])
        boxes = np.concatenate([d.boxes for d in detections])
        sizes = np.array([(d.image_width, d.image_height) for d in detections])[owner]
        poses = head_pose(np.concatenate([d.landmarks for d in detections]), sizes[:, 0], sizes[:, 1])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        scores = np.concatenate([d.scores for d in detections])
        quality = quality_score(sides, merged.laplacian, poses, scores)
        columns = (embeddings, norms, ages, age_stds, male, poses, quality, merged.laplacian, merged.points)
        bounds = np.cumsum([len(d) for d in detections])[:-1]
        per_image = [np.split(column, bounds) for column in columns]
        return [FaceAttributes(*(parts[k] for parts in per_image)) for k in range(len(detections))]
