"""``facestream analyze`` and ``facestream verify``: faces in image files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from engines.detections import FaceDetections
from engines.errors import FaceStreamError, InvalidImageError
from engines.face_attributes import FaceAttributes
from engines.image import read_image_file
from engines.mtcnn import MTCNNDetector
from engines.multitask import MultiTaskNet
from engines.verification import Verification, verify
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

    def faces(self, image: np.ndarray) -> list[FaceSample]:
        """The gallery's view of every face of a BGR image (embedder protocol)."""
        faces, attributes = self.analyze(image)
        if attributes is None:
            raise ValueError("embedding faces needs the multi-task network")
        return [
            FaceSample(attributes.embeddings[i], float(attributes.qualities[i]), tuple(float(v) for v in faces.boxes[i]))
            for i in range(len(faces))
        ]

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


def write_human(result: ImageResult, out: TextIO) -> None:
    record = result.record
    if not result.ok:
        out.write(f"{record['image']}: ERROR {record['error']}\n")
        return
    faces = record["faces"]
    out.write(f"{record['image']}: {len(faces)} face(s) in {record['width']}x{record['height']}\n")
    for n, face in enumerate(faces, 1):
        x1, y1, x2, y2 = face["box"]
        line = f"  #{n} box ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f}) score {face['score']:.3f}"
        if "age" in face:
            pose = face["pose"]
            line += (
                f", {face['gender']} ({face['gender_score']:.2f}), age {face['age']:.0f} +- {face['age_std']:.0f}, "
                f"yaw {pose['yaw']} pitch {pose['pitch']} roll {pose['roll']}, quality {face['quality']:.2f}"
            )
        out.write(line + "\n")


def run_analyze(
    analyzer: FaceAnalyzer, paths: Sequence[Path], *, as_json: bool, embeddings: bool, out: TextIO
) -> int:
    """Analyse every input; returns the exit status (1 if any image failed, else 0)."""
    failed = 0
    total = 0
    for path in expand_inputs(paths):
        total += 1
        result = analyze_file(analyzer, path, embeddings=embeddings)
        if not result.ok:
            failed += 1
            log.error("%s", result.record["error"])
        if as_json:
            out.write(json.dumps(result.record) + "\n")
        else:
            write_human(result, out)
        out.flush()
    if total == 0:
        log.error("no image files found in %s", ", ".join(map(str, paths)))
        return 1
    if failed:
        log.error("%d of %d image(s) could not be analysed", failed, total)
    return 1 if failed else 0


def run_verify(analyzer: FaceAnalyzer, image_a: Path, image_b: Path, threshold: float, out: TextIO) -> int:
    """Compare the largest face of two images; exit status 0 (1 if a face is missing)."""
    try:
        _, a = analyzer.largest_face(image_a)
        _, b = analyzer.largest_face(image_b)
    except FaceStreamError as exc:
        if not exc.skippable:
            raise
        log.error("%s", exc)
        return 1
    result: Verification = verify(a.descriptors[0], b.descriptors[0], threshold)
    out.write(json.dumps({
        "distance": round(result.distance, 4),
        "similarity": round(result.similarity, 4),
        "same": result.same,
        "threshold": result.threshold,
    }) + "\n")
    return 0
