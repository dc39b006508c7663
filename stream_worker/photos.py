"""Faces in photos: the detector and the multi-task network behind one object.

:class:`FaceAnalyzer` is the embedder the gallery enrols and searches with
(:class:`gallery.enrol.FaceEmbedder`), and what ``facestream analyze`` and ``verify`` run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.detections import FaceDetections
from engines.errors import FaceStreamError, InvalidImageError
from engines.image import decode_image, read_image_file
from engines.mtcnn.detector import MTCNNDetector
from engines.multitask.attributes import FaceAttributes
from engines.multitask.network import MultiTaskNet
from gallery.chips import FaceChip
from gallery.enrol import FaceSample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})


def expand_inputs(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given; folders expand to the image files directly inside them, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


@dataclass(frozen=True)
class ImageResult:
    path: Path
    record: dict[str, Any]
    ok: bool


@dataclass(frozen=True)
class FaceAnalyzer:
    """Detection, then (unless ``multitask`` is None) the multi-task analysis of each face."""

    detector: MTCNNDetector
    multitask: MultiTaskNet | None

    def analyze(self, image: np.ndarray) -> tuple[FaceDetections, FaceAttributes | None]:
        faces = self.detector.detect(image)
        attributes = self.multitask.analyze([image], [faces])[0] if self.multitask is not None else None
        return faces, attributes

    def faces(self, image: np.ndarray, *, with_chips: bool = False) -> list[FaceSample]:
        """The gallery's view of every face of a BGR image (embedder protocol); with
        ``with_chips``, each face's chip for storage too (enrolment)."""
        faces, attributes = self.analyze(image)
        if attributes is None:
            raise ValueError("embedding faces needs the multi-task network")
        return [
            FaceSample(attributes.embeddings[i], float(attributes.qualities[i]), tuple(float(v) for v in faces.boxes[i]),
                       FaceChip.from_face(image, faces.boxes[i], faces.landmarks[i]) if with_chips else None)
            for i in range(len(faces))
        ]

    def embed_chip(self, chip: FaceChip) -> np.ndarray:
        """The embedding of a stored face chip (``gallery reembed``)."""
        if self.multitask is None:
            raise ValueError("embedding faces needs the multi-task network")
        image, face = chip.decode()
        return self.multitask.analyze([image], [face])[0].embeddings[0]

    def photo_faces(self, data: bytes, *, name: str, max_pixels: int, with_chips: bool = False) -> list[FaceSample]:
        """Every face of an encoded photo (the gallery's embedder protocol)."""
        return self.faces(decode_image(data, name=name, max_pixels=max_pixels), with_chips=with_chips)

    def largest_face(self, path: Path) -> tuple[FaceDetections, FaceAttributes]:
        """The largest face of an image file, with its attributes; refuses faceless images."""
        if self.multitask is None:
            raise ValueError("largest_face needs the multi-task network")
        image = read_image_file(path)
        faces = self.detector.detect(image)
        if len(faces) == 0:
            raise InvalidImageError(f"{path}: no face found")
        largest = faces[int(np.argmax(faces.areas))]
        return largest, self.multitask.analyze([image], [largest])[0]


def face_records(faces: FaceDetections, attributes: FaceAttributes | None, *, embeddings: bool) -> list[dict[str, Any]]:
    records = faces.to_json()
    if attributes is not None:
        for i, record in enumerate(records):
            record.update(attributes.to_json(i, embedding=embeddings))
    return records


def analyze_file(analyzer: FaceAnalyzer, path: Path, *, embeddings: bool = False) -> ImageResult:
    """Analyse one file; a bad file gives an error record, never an exception."""
    try:
        image = read_image_file(path)
        faces, attributes = analyzer.analyze(image)
    except FaceStreamError as exc:
        if not exc.skippable:
            raise
        return ImageResult(path, {"image": str(path), "error": str(exc), "error_type": type(exc).__name__}, False)
    record = {
        "image": str(path),
        "width": faces.image_width,
        "height": faces.image_height,
        "faces": face_records(faces, attributes, embeddings=embeddings),
    }
    return ImageResult(path, record, True)
