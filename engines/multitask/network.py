"""The multi-task face network: one call gives every detected face its identity embedding,
age, gender, head pose and quality.

The identity embedding comes from the configured recognizer
(:mod:`engines.multitask.recognizers`): dlib's ResNet on a 150 px dlib chip, SFace on a
112 px ArcFace chip aligned by the detector's 5 landmarks, or both fused into one vector.
Age, gender, facial attributes and expression come by default from the trained task heads
(:mod:`engines.multitask.heads`), which read the pooled trunk feature of the same SFace call
that gives the embedding: one backbone per face. With ``heads="cydral"`` they come instead from
the Cydral age net (64 px) and gender net (32 px), which share dlib's 5-point alignment and
input normalisation with the dlib ResNet (no attributes or expression). Those stay
separate ONNX graphs rather than one fused graph: the age head is sensitive to how its
chip is resampled, and an in-graph resampling from the 150 px chip moved ages by several
years on some faces (MODELS.md, section e). Each net runs once per call over all faces of
all images passed in; the faces are split into chunks across the runtime's workers, each
chunk aligning its faces and running the three nets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
from engines.multitask.heads import AGE_YEARS, TaskHeads, decode_age_years
from engines.multitask.recognizers import RecognizerProfile, fuse, profile, sface_identity
from engines.runtime.backend import BackendInfo, InferenceBackend
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import (
    AGE,
    EMBEDDING,
    GENDER,
    MULTITASK,
    SFACE,
    SFACE_BUNDLE,
    SFACE_FEATURE,
    SHAPE_PREDICTOR_FILE,
)
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
    male_probs: np.ndarray
    laplacian: np.ndarray
    points: np.ndarray
    sface: np.ndarray
    """Raw SFace embeddings of every face when the trained heads ran (else empty)."""
    attributes: np.ndarray
    expression: np.ndarray


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
        heads: TaskHeads | None = None,
    ) -> None:
        self.profile: RecognizerProfile = profile(recognizer)
        needs = {Recognizer.DLIB: (True, False), Recognizer.SFACE: (False, True), Recognizer.FUSED: (True, True)}
        wanted_dlib, wanted_sface = needs[self.profile.recognizer]
        if (embedding is not None) != wanted_dlib or (sface is not None) != (wanted_sface or heads is not None):
            raise ValueError(f"recognizer {recognizer.value} needs exactly its own embedding nets "
                             "(and SFace's trunk for the trained heads)")
        if heads is None and (age is None or gender is None):
            raise ValueError("without trained heads the Cydral age and gender nets are needed")
        self._embedding, self._sface, self._age, self._gender = embedding, sface, age, gender
        self._recognizer_sface = wanted_sface
        self._heads = heads
        self._aligner = aligner
        self._runtime = runtime
        self._chips = (EMBEDDING.chip,) if heads is not None else CHIPS
        self.attribute_names: tuple[str, ...] = heads.manifest.shipped_attributes if heads else ()
        self.expression_names: tuple[str, ...] = (
            heads.manifest.expressions if heads and heads.manifest.expression_shipped else ())

    @classmethod
    def create(cls, *, runtime: EngineRuntime, store: ModelStore | None = None,
               recognizer: Recognizer | str = DEFAULT_RECOGNIZER, heads: str | Path = "trained") -> MultiTaskNet:
        """Load the multi-task bundle, SFace's when the recognizer or the trained heads use
        it, and the heads (``trained``: the shipped ones; ``cydral``: the published age and
        gender nets instead; or a folder written by ``facestream train heads``), fetching
        weights on first use."""
        recognizer = Recognizer(recognizer)
        store = store or ModelStore()
        installed = store.ensure(MULTITASK)
        embedding = sface = age = gender = task_heads = None
        if str(heads) == "cydral":
            age, gender = (runtime.load(installed.path(installed.spec(s)), name=s.name) for s in (AGE, GENDER))
        if recognizer in (Recognizer.DLIB, Recognizer.FUSED):
            embedding = runtime.load(installed.path(installed.spec(EMBEDDING)), name=EMBEDDING.name)
        if recognizer in (Recognizer.SFACE, Recognizer.FUSED) or str(heads) != "cydral":
            sface_bundle = store.ensure(SFACE_BUNDLE)
            sface = runtime.load(sface_bundle.path(sface_bundle.spec(SFACE)), name=SFACE.name)
        if str(heads) != "cydral":
            trunk = f"{SFACE_BUNDLE.name}-v{SFACE_BUNDLE.version}"
            task_heads = TaskHeads.load(runtime, None if str(heads) == "trained" else Path(heads), trunk=trunk)
        aligner = FaceAligner(installed.directory / SHAPE_PREDICTOR_FILE)
        return cls(embedding, age, gender, aligner, runtime=runtime, sface=sface, recognizer=recognizer,
                   heads=task_heads)

    @property
    def model_id(self) -> str:
        """The embedding space of :attr:`FaceAttributes.embeddings` this net produces."""
        return self.profile.model_id

    @property
    def backend_info(self) -> tuple[BackendInfo, ...]:
        nets = (self._embedding, self._sface, self._age, self._gender, self._heads and self._heads.backend)
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
        runs only on the faces it accepts (the others' embeddings and norms are NaN). With
        the trained heads, age, gender, attributes and expression come from that same SFace
        call, so they too are computed only for the accepted faces (NaN for the others: the
        stream pipeline gives such a face its track's estimate).
        """
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detection results")
        faces = [_Face(k, row) for k, d in enumerate(detections) for row in range(len(d))]
        if not faces:
            return [FaceAttributes.empty(self.profile.dim, self.attribute_names, self.expression_names) for _ in images]
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
        if self._heads is not None and embed_if is not None:
            laplacian = np.concatenate([sharpness(c.embedding_chips) for c in chunks])
            poses, quality = self._quality(faces, detections, laplacian)
            wanted = [i for i, (face, q) in enumerate(zip(faces, quality)) if embed_if(face.image, face.row, float(q))]
            merged = self._infer_selected(chunks, np.array(wanted, np.int64), laplacian)
            return self._decode(detections, merged, merged.descriptors, poses, quality)
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

    def _infer_selected(self, chunks: list[_Aligned], wanted: np.ndarray, laplacian: np.ndarray) -> _ChunkResult:
        """Embedding and head outputs of the faces ``wanted`` (indices over all chunks), with
        the trained heads; NaN rows for the other faces."""
        n = len(laplacian)
        points = np.concatenate([c.points for c in chunks])
        nan = {
            "descriptors": np.full((n, self.profile.dim), np.nan, np.float32),
            "age_probs": np.full((n, len(AGE_YEARS)), np.nan, np.float32),
            "male_probs": np.full(n, np.nan, np.float32),
            "attributes": np.full((n, len(self.attribute_names)), np.nan, np.float32),
            "expression": np.full((n, len(self.expression_names)), np.nan, np.float32),
        }
        if len(wanted):
            dlib = np.concatenate([c.embedding_chips for c in chunks])[wanted]
            arcface = np.concatenate([c.arcface_chips for c in chunks])[wanted]  # type: ignore[misc]
            empty = np.zeros((len(wanted), 0, 0, 3), np.uint8)
            parts = self._chunks(list(range(len(wanted))))
            pending = [self._runtime.submit(self._infer_and_embed, _Aligned(
                dlib[part], empty[part], empty[part], points[wanted][part], arcface[part])) for part in parts]
            results = [p.result() for p in pending]
            for name in nan:
                nan[name][wanted] = np.concatenate([getattr(r, name) for r in results])
        return _ChunkResult(nan["descriptors"], nan["age_probs"], nan["male_probs"], laplacian, points,
                            np.zeros((n, 0), np.float32), nan["attributes"], nan["expression"])

    def _chunks(self, items: list[T]) -> list[list[T]]:
        """Items split for the runtime's workers (at most ``CHUNK_FACES`` each)."""
        workers = self._runtime.workers
        size = min(self.CHUNK_FACES, -(-len(items) // workers)) if workers > 1 else len(items)
        return [items[start : start + size] for start in range(0, len(items), max(size, 1))]

    def _embed_selected(self, chunks: list[_Aligned], wanted: np.ndarray, count: int) -> np.ndarray:
        """Raw embeddings of the faces ``wanted`` (indices over all chunks); NaN rows elsewhere
        (the Cydral path; with the trained heads, :meth:`_infer_selected` does this)."""
        out = np.full((count, self.profile.dim), np.nan, np.float32)
        if not len(wanted):
            return out
        dlib = np.concatenate([c.embedding_chips for c in chunks])[wanted] if self._embedding is not None else None
        sface = None
        if self._recognizer_sface:
            sface = np.concatenate([c.arcface_chips for c in chunks])[wanted]  # type: ignore[misc]
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
            for bucket, chip in zip(chips, self._aligner.chips(rgb, shape, self._chips)):
                bucket.append(chip)
            if self._sface is not None:
                arcface.append(arcface_chip(rgb, found.landmarks[face.row], SFACE.chip.size, found.boxes[face.row]))
        empty = np.zeros((len(faces), 0, 0, 3), np.uint8)
        return _Aligned(*(np.stack(c) if c else empty for c in chips), points, np.stack(arcface) if arcface else None)

    def _embed(self, chips: tuple[np.ndarray | None, np.ndarray | None]) -> np.ndarray:
        """Embeddings of the configured recognizer (dlib's raw, not normalised; SFace's
        centred) from (dlib chips, ArcFace chips or SFace's raw embeddings already computed),
        each given when the recognizer uses it."""
        dlib_chips, arcface = chips
        dlib = sface = None
        if self._embedding is not None and dlib_chips is not None:
            dlib = self._embedding.run({EMBEDDING.input_name: _normalise(dlib_chips, EMBEDDING)})["descriptor"]
        if self._recognizer_sface and arcface is not None:
            sface = sface_identity(arcface if arcface.ndim == 2 else self._run_sface(arcface)[0])
        if dlib is None:
            return sface
        if sface is None:
            return dlib
        return fuse(dlib / np.maximum(np.linalg.norm(dlib, axis=1, keepdims=True), 1e-12), sface,
                    self.profile.fusion_weight)

    def _run_sface(self, arcface_chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SFace's raw embeddings and pooled trunk features of ArcFace chips."""
        assert self._sface is not None
        out = self._sface.run({SFACE.input_name: _normalise(arcface_chips, SFACE)})
        return out[SFACE.outputs[0].name], out[SFACE_FEATURE]

    def _infer(self, aligned: _Aligned) -> _ChunkResult:
        """Age, gender, attributes, expression and sharpness of a chunk (the embedding only
        as far as the trained heads need SFace's)."""
        n = len(aligned.points)
        if self._heads is not None:
            assert aligned.arcface_chips is not None
            raw, feature = self._run_sface(aligned.arcface_chips)
            unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
            heads = self._heads.run(unit, feature)
            expression = heads.expression if heads.expression is not None else np.zeros((n, 0), np.float32)
            return _ChunkResult(np.empty(0), heads.age_probs, heads.male_probs, sharpness(aligned.embedding_chips),
                                aligned.points, raw, heads.attributes, expression)
        assert self._age is not None and self._gender is not None
        age = self._age.run({AGE.input_name: _normalise(aligned.age_chips, AGE)})
        gender = self._gender.run({GENDER.input_name: _normalise(aligned.gender_chips, GENDER)})
        return _ChunkResult(
            descriptors=np.empty(0),
            age_probs=age["probabilities"],
            male_probs=decode_gender(gender["probabilities"]),
            laplacian=sharpness(aligned.embedding_chips),
            points=aligned.points,
            sface=np.zeros((n, 0), np.float32),
            attributes=np.zeros((n, 0), np.float32),
            expression=np.zeros((n, 0), np.float32),
        )

    def _infer_and_embed(self, aligned: _Aligned) -> _ChunkResult:
        result = self._infer(aligned)
        sface = result.sface if result.sface.shape[1] else aligned.arcface_chips
        embedded = self._embed((aligned.embedding_chips, sface))
        return _ChunkResult(embedded, *(getattr(result, f) for f in list(_ChunkResult.__dataclass_fields__)[1:]))

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

    def _decode(self, detections: Sequence[FaceDetections], merged: _ChunkResult, descriptors: np.ndarray,
                poses: np.ndarray, quality: np.ndarray) -> list[FaceAttributes]:
        """Raw outputs of all faces -> one FaceAttributes per image (vectorised over faces)."""
        norms = np.linalg.norm(descriptors, axis=1)
        embeddings = descriptors / np.maximum(norms, 1e-12)[:, None]
        decode = decode_age_years if self._heads is not None else decode_age
        ages, age_stds = decode(merged.age_probs)
        columns = (embeddings, norms, ages, age_stds, merged.male_probs, poses, quality, merged.laplacian,
                   merged.points, merged.attributes, merged.expression)
        bounds = np.cumsum([len(d) for d in detections])[:-1]
        per_image = [np.split(column, bounds) for column in columns]
        return [FaceAttributes(*(parts[k] for parts in per_image[:9]), per_image[9][k], self.attribute_names,
                               per_image[10][k], self.expression_names) for k in range(len(detections))]
