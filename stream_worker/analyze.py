"""``facestream analyze``: faces in image files, as JSON lines or a readable summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from engines.errors import FaceStreamError
from engines.image import read_image_file
from engines.mtcnn import MTCNNDetector

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


def analyze_file(detector: MTCNNDetector, path: Path) -> ImageResult:
    """Detect faces in one file; a bad file gives an error record, never an exception."""
    try:
        image = read_image_file(path)
        started = time.perf_counter()
        faces = detector.detect(image)
        log.debug("%s: %d faces in %.1f ms", path, len(faces), (time.perf_counter() - started) * 1000)
    except FaceStreamError as exc:
        if not exc.skippable:
            raise
        return ImageResult(path, {"image": str(path), "error": str(exc), "error_type": type(exc).__name__}, False)
    record = {"image": str(path), "width": faces.image_width, "height": faces.image_height, "faces": faces.to_json()}
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
        out.write(f"  #{n} box ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f}) score {face['score']:.3f}\n")


def run_analyze(detector: MTCNNDetector, paths: Sequence[Path], *, as_json: bool, out: TextIO) -> int:
    """Analyse every input; returns the exit status (1 if any image failed, else 0)."""
    failed = 0
    total = 0
    for path in expand_inputs(paths):
        total += 1
        result = analyze_file(detector, path)
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
