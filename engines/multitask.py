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

from engines.align import FaceAligner
from engines.backends import BackendInfo, InferenceBackend
from engines.catalog import AGE, EMBEDDING, GENDER, MULTITASK, SHAPE_PREDICTOR_FILE
from engines.detections import FaceDetections
from engines.face_attributes import (
    FaceAttributes,
    decode_age,
    decode_gender,
    head_pose,
    quality_score,
    sharpness,
)
from engines.image import ColorOrder, normalise_pixels, to_rgb
from engines.model_store import ModelStore
from engines.runtime import EngineRuntime
from engines.specs import ModelSpec

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
class _ChunkResult:
    descriptors: np.ndarray
    age_probs: np.ndarray
    gender_probs: np.ndarray
    laplacian: np.ndarray
    points: np.ndarray


class MultiTaskNet:
    """Embedding, age, gender, pose and quality for detected faces. Thread-safe."""

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
        chunks = np.array_split(np.arange(len(faces)), min(self._runtime.workers, len(faces)))
        results = self._runtime.map(
            lambda idx: self._run_chunk(rgbs, detections, [faces[i] for i in idx]), chunks
        )
        merged = _ChunkResult(*(np.concatenate([getattr(r, f) for r in results]) for f in _ChunkResult.__dataclass_fields__))
        return self._decode(faces, detections, merged)

    def _run_chunk(
        self, rgbs: dict[int, np.ndarray], detections: Sequence[FaceDetections], faces: list[_Face]
    ) -> _ChunkResult:
        chips: list[list[np.ndarray]] = [[], [], []]
        points = np.empty((len(faces), 5, 2), np.float32)
        for i, face in enumerate(faces):
            shape = self._aligner.landmarks(rgbs[face.image], detections[face.image].boxes[face.row])
            points[i] = FaceAligner.points(shape)
            for bucket, chip in zip(chips, self._aligner.chips(rgbs[face.image], shape, CHIPS)):
                bucket.append(chip)
        emb_chips, age_chips, gender_chips = (np.stack(c) for c in chips)
        return _ChunkResult(
            descriptors=self._embedding.run({EMBEDDING.input_name: _normalise(emb_chips, EMBEDDING)})["descriptor"],
            age_probs=self._age.run({AGE.input_name: _normalise(age_chips, AGE)})["probabilities"],
            gender_probs=self._gender.run({GENDER.input_name: _normalise(gender_chips, GENDER)})["probabilities"],
            laplacian=sharpness(emb_chips),
            points=points,
        )

    @staticmethod
    def _decode(
        faces: list[_Face], detections: Sequence[FaceDetections], merged: _ChunkResult
    ) -> list[FaceAttributes]:
        norms = np.linalg.norm(merged.descriptors, axis=1)
        embeddings = merged.descriptors / np.maximum(norms, 1e-12)[:, None]
        ages, age_stds = decode_age(merged.age_probs)
        male = decode_gender(merged.gender_probs)
        owner = np.array([f.image for f in faces])
        out = []
        for k, det in enumerate(detections):
            rows = np.flatnonzero(owner == k)
            if len(rows) == 0:
                out.append(FaceAttributes.empty())
                continue
            poses = head_pose(det.landmarks, det.image_width, det.image_height)
            sides = np.maximum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
            quality = quality_score(sides, merged.laplacian[rows], poses, det.scores)
            out.append(
                FaceAttributes(
                    embeddings[rows], norms[rows], ages[rows], age_stds[rows], male[rows], poses, quality,
                    merged.points[rows],
                )
            )
        return out
