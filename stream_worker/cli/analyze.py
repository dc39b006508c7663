"""``facestream analyze`` and ``facestream verify``: faces in image files."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engines.errors import FaceStreamError
from engines.multitask.recognizers import profile
from engines.multitask.verification import DEFAULT_SIMILARITY_THRESHOLD, Verification, verify
from stream_worker.cli.options import (
    add_config_options,
    add_pipeline_options,
    engine_runtime,
    face_analyzer,
    similarity,
)
from stream_worker.config import FaceStreamConfig

if TYPE_CHECKING:  # (the models load when a command runs, not to parse its arguments)
    from stream_worker.photos import FaceAnalyzer, ImageResult

log = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    analyze = commands.add_parser("analyze", help="find faces in image files",
                                  description="Find faces and their 5 landmarks in image files or folders.")
    analyze.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    analyze.add_argument("--json", action="store_true", help="one JSON object per image per line")
    analyze.add_argument("--embeddings", action="store_true", help="include each face's identity embedding (128-D; 256-D fused)")
    analyze.add_argument("--detect-only", action="store_true",
                         help="boxes, scores and landmarks only (skip age, gender, pose, quality and embeddings)")
    add_pipeline_options(analyze)
    add_config_options(analyze)
    analyze.set_defaults(handler=run_analyze_command)

    verify_cmd = commands.add_parser(
        "verify", help="are two photos the same person? (largest face of each)",
        description="Compare the largest face of two images: prints JSON with the cosine similarity of the "
        "identity embeddings, the raw descriptors' distance (dlib's scale with dlib-resnet-v1), the decision and the "
        "threshold (default: the configured recognizer's, false-match rate 1e-3).",
    )
    verify_cmd.add_argument("image_a", type=Path, metavar="IMAGE_A")
    verify_cmd.add_argument("image_b", type=Path, metavar="IMAGE_B")
    verify_cmd.add_argument("--threshold", type=similarity, default=None,
                            help="cosine similarity at or above which the faces are the same person (default: the "
                            f"recognizer's, false-match rate 1e-3; {DEFAULT_SIMILARITY_THRESHOLD} for the default one)")
    add_pipeline_options(verify_cmd)
    add_config_options(verify_cmd)
    verify_cmd.set_defaults(handler=run_verify_command)


def run_analyze_command(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    with engine_runtime(config) as runtime:
        analyzer = face_analyzer(config, runtime, multitask=not args.detect_only)
        return run_analyze(analyzer, args.images, as_json=args.json, embeddings=args.embeddings, out=sys.stdout)


def run_verify_command(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    with engine_runtime(config) as runtime:
        threshold = args.threshold if args.threshold is not None else profile(config.models.recognizer).verify_threshold
        return run_verify(face_analyzer(config, runtime, multitask=True), args.image_a, args.image_b, threshold,
                          sys.stdout)


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
    from stream_worker.photos import analyze_file, expand_inputs

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
