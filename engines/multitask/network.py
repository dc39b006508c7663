"""The multi-task face network: one call gives every detected face its identity embedding,
age, gender, head pose and quality.

The identity embedding comes from the configured recognizer
(:mod:`engines.multitask.recognizers`): dlib's ResNet on a 150 px dlib chip, SFace on a
112 px ArcFace chip aligned by the detector's 5 landmarks, or both fused into one vector.
The Cydral age net (64 px) and gender net (32 px) share dlib's 5-point alignment and input
normalisation with the dlib ResNet. They stay
separate ONNX graphs rather than one fused graph: the age head is sensitive to how its
chip is resampled, and an in-graph resampling from the 150 px chip moved ages by several
years on some faces (MODELS.md, section e). Each net runs once per call over all faces of
all images passed in; the faces are split into chunks across the runtime's workers, each
chunk aligning its faces and running the three nets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.detections import FaceDetections
from engines.image import ColorOrder, normalise_pixels, to_rgb
from engines.multitask.align import FaceAligner, arcface_chip
from engines.multitask.attributes import (
    FaceAttributes,
    decode_age,
    decode_gender,
    head_pose,
    quality_score,
    sharpness,
)
from engines.multitask.recognizers import RecognizerProfile, fuse, profile
from engines.runtime.backend import BackendInfo, InferenceBackend
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import AGE, EMBEDDING, GENDER, MULTITASK, SFACE, SFACE_BUNDLE, SHAPE_PREDICTOR_FILE
from engines.store.model_store import ModelStore
from engines.store.specs import ModelSpec

T = TypeVar("T")

EmbedFilter = Callable[[int, int, float], bool]
"""``(image index, face row, quality) -> whether the recognizer should embed the face``."""

CHIPS = (EMBEDDING.chip, AGE.chip, GENDER.chip)
"""The dlib chips every face gets: 150 px (dlib embedding, sharpness), age and gender."""


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
    arcface_chips: np.ndarray | None


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
        embedding: InferenceBackend | None,
        age: InferenceBackend,
        gender: InferenceBackend,
        aligner: FaceAligner,
        *,
        runtime: EngineRuntime,
        sface: InferenceBackend | None = None,
        recognizer: Recognizer = DEFAULT_RECOGNIZER,
    ) -> None:
        self.profile: RecognizerProfile = profile(recognizer)
        needs = {Recognizer.DLIB: (True, False), Recognizer.SFACE: (False, True), Recognizer.FUSED: (True, True)}
        if needs[self.profile.recognizer] != (embedding is not None, sface is not None):
            raise ValueError(f"recognizer {recognizer.value} needs exactly its own embedding nets")
        self._embedding, self._sface, self._age, self._gender = embedding, sface, age, gender
        self._aligner = aligner
        self._runtime = runtime

    @classmethod
    def create(cls, *, runtime: EngineRuntime, store: ModelStore | None = None,
               recognizer: Recognizer | str = DEFAULT_RECOGNIZER) -> MultiTaskNet:
        """Load the multi-task bundle (and SFace's when the recognizer uses it) from the model
        store, fetching them on first use."""
        recognizer = Recognizer(recognizer)
        store = store or ModelStore()
        installed = store.ensure(MULTITASK)
        age, gender = (runtime.load(installed.path(installed.spec(s)), name=s.name) for s in (AGE, GENDER))
        embedding = sface = None
        if recognizer in (Recognizer.DLIB, Recognizer.FUSED):
            embedding = runtime.load(installed.path(installed.spec(EMBEDDING)), name=EMBEDDING.name)
        if recognizer in (Recognizer.SFACE, Recognizer.FUSED):
            sface_bundle = store.ensure(SFACE_BUNDLE)
            sface = runtime.load(sface_bundle.path(sface_bundle.spec(SFACE)), name=SFACE.name)
        aligner = FaceAligner(installed.directory / SHAPE_PREDICTOR_FILE)
        return cls(embedding, age, gender, aligner, runtime=runtime, sface=sface, recognizer=recognizer)

    @property
    def model_id(self) -> str:
        """The embedding space of :attr:`FaceAttributes.embeddings` this net produces."""
        return self.profile.model_id

    @property
    def backend_info(self) -> tuple[BackendInfo, ...]:
        nets = (self._embedding, self._sface, self._age, self._gender)
        return tuple(net.info for net in nets if net is not None)

    def analyze(
        self,
        images: Sequence[np.ndarray],
        detections: Sequence[FaceDetections],
        *,
        color: ColorOrder | str = ColorOrder.BGR,
        embed_if: EmbedFilter | None = None,
    ) -> list[FaceAttributes]:
        """Analyse every detected face of every image; one result per image, row i for face i.

        ``detections[k]`` must be the detector's result for ``images[k]`` (same size).
        Faces partly outside the image are analysed on black padding. ``embed_if(k, row,
        quality)``, when given, is asked per face once its quality is known; the recognizer
        runs only on the faces it accepts (the others' embeddings and norms are NaN).
        """
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detection results")
        faces = [_Face(k, row) for k, d in enumerate(detections) for row in range(len(d))]
        if not faces:
            return [FaceAttributes.empty(self.profile.dim) for _ in images]
        rgbs = {}
        for k in {f.image for f in faces}:
            rgb = to_rgb(images[k], color)
            if (rgb.shape[1], rgb.shape[0]) != (detections[k].image_width, detections[k].image_height):
                raise ValueError(
                    f"image {k} is {rgb.shape[1]}x{rgb.shape[0]} but its detections are for "
                    f"{detections[k].image_width}x{detections[k].image_height}"
                )
            rgbs[k] = rgb
        embed_all = embed_if is None
        infer = self._infer_and_embed if embed_all else self._infer
        chunks = [self._align(rgbs, detections, part) for part in self._chunks(faces)]
        pending = [self._runtime.submit(infer, aligned) for aligned in chunks]
        results = [p.result() for p in pending]
        merged = _ChunkResult(*(
            None if f == "descriptors" and not embed_all else np.concatenate([getattr(r, f) for r in results])
            for f in _ChunkResult.__dataclass_fields__
        ))
        poses, quality = self._quality(faces, detections, merged.laplacian)
        if embed_all:
            descriptors = merged.descriptors
        else:
            assert embed_if is not None
            wanted = [i for i, (face, q) in enumerate(zip(faces, quality)) if embed_if(face.image, face.row, float(q))]
            descriptors = self._embed_selected(chunks, np.array(wanted, np.int64), len(faces))
        return self._decode(detections, merged, descriptors, poses, quality)

    def _chunks(self, items: list[T]) -> list[list[T]]:
        """Items split for the runtime's workers (at most ``CHUNK_FACES`` each)."""
        workers = self._runtime.workers
        size = min(self.CHUNK_FACES, -(-len(items) // workers)) if workers > 1 else len(items)
        return [items[start : start + size] for start in range(0, len(items), max(size, 1))]

    def _embed_selected(self, chunks: list[_Aligned], wanted: np.ndarray, count: int) -> np.ndarray:
        """Raw embeddings of the faces ``wanted`` (indices over all chunks); NaN rows elsewhere."""
        out = np.full((count, self.profile.dim), np.nan, np.float32)
        if not len(wanted):
            return out
        dlib = np.concatenate([c.embedding_chips for c in chunks])[wanted] if self._embedding is not None else None
        sface = np.concatenate([c.arcface_chips for c in chunks])[wanted] if self._sface is not None else None  # type: ignore[misc]
        pending = [
            self._runtime.submit(self._embed, (None if dlib is None else dlib[part], None if sface is None else sface[part]))
            for part in self._chunks(list(range(len(wanted))))
        ]
        out[wanted] = np.concatenate([p.result() for p in pending])
        return out

    def _align(self, rgbs: dict[int, np.ndarray], detections: Sequence[FaceDetections], faces: list[_Face]) -> _Aligned:
        chips: list[list[np.ndarray]] = [[], [], []]
        arcface: list[np.ndarray] = []
        points = np.empty((len(faces), 5, 2), np.float32)
        for i, face in enumerate(faces):
            rgb, found = rgbs[face.image], detections[face.image]
            shape = self._aligner.landmarks(rgb, found.boxes[face.row])
            points[i] = FaceAligner.points(shape)
            for bucket, chip in zip(chips, self._aligner.chips(rgb, shape, CHIPS)):
                bucket.append(chip)
            if self._sface is not None:
                arcface.append(arcface_chip(rgb, found.landmarks[face.row], SFACE.chip.size, found.boxes[face.row]))
        return _Aligned(*(np.stack(c) for c in chips), points, np.stack(arcface) if arcface else None)

    def _embed(self, chips: tuple[np.ndarray | None, np.ndarray | None]) -> np.ndarray:
        """Raw (not normalised) embeddings of the configured recognizer from (dlib chips,
        ArcFace chips), each given when the recognizer uses it."""
        dlib_chips, arcface_chips = chips
        dlib = sface = None
        if self._embedding is not None and dlib_chips is not None:
            dlib = self._embedding.run({EMBEDDING.input_name: _normalise(dlib_chips, EMBEDDING)})["descriptor"]
        if self._sface is not None and arcface_chips is not None:
            sface = self._sface.run({SFACE.input_name: _normalise(arcface_chips, SFACE)})["fc1"]
        if dlib is None:
            return sface
        if sface is None:
            return dlib
        unit = [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in (dlib, sface)]
        return fuse(*unit, self.profile.fusion_weight)

    def _infer(self, aligned: _Aligned) -> _ChunkResult:
        """Age, gender and sharpness of a chunk (no embedding)."""
        age = self._age.run({AGE.input_name: _normalise(aligned.age_chips, AGE)})
        gender = self._gender.run({GENDER.input_name: _normalise(aligned.gender_chips, GENDER)})
        return _ChunkResult(
            descriptors=np.empty(0),
            age_probs=age["probabilities"],
            gender_probs=gender["probabilities"],
            laplacian=sharpness(aligned.embedding_chips),
            points=aligned.points,
        )

    def _infer_and_embed(self, aligned: _Aligned) -> _ChunkResult:
        result = self._infer(aligned)
        embedded = self._embed((aligned.embedding_chips, aligned.arcface_chips))
        return _ChunkResult(embedded, result.age_probs, result.gender_probs, result.laplacian, result.points)

    @staticmethod
    def _quality(faces: list[_Face], detections: Sequence[FaceDetections], laplacian: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Head pose and quality of every face (vectorised)."""
        owner = np.array([f.image for f in faces])
        boxes = np.concatenate([d.boxes for d in detections])
        sizes = np.array([(d.image_width, d.image_height) for d in detections])[owner]
        poses = head_pose(np.concatenate([d.landmarks for d in detections]), sizes[:, 0], sizes[:, 1])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        scores = np.concatenate([d.scores for d in detections])
        return poses, quality_score(sides, laplacian, poses, scores)

    @staticmethod
    def _decode(detections: Sequence[FaceDetections], merged: _ChunkResult, descriptors: np.ndarray,
                poses: np.ndarray, quality: np.ndarray) -> list[FaceAttributes]:
        """Raw outputs of all faces -> one FaceAttributes per image (vectorised over faces)."""
        norms = np.linalg.norm(descriptors, axis=1)
        embeddings = descriptors / np.maximum(norms, 1e-12)[:, None]
        ages, age_stds = decode_age(merged.age_probs)
        male = decode_gender(merged.gender_probs)
        columns = (embeddings, norms, ages, age_stds, male, poses, quality, merged.laplacian, merged.points)
        bounds = np.cumsum([len(d) for d in detections])[:-1]
        per_image = [np.split(column, bounds) for column in columns]
        return [FaceAttributes(*(parts[k] for parts in per_image)) for k in range(len(detections))]
