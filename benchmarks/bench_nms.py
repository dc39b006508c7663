"""NMS: OpenCV's C++ ``NMSBoxes`` against FaceStream's vectorised numpy loop.

Candidates are the real stage-1 candidates (before the cross-level NMS) of frames of the
shared clip, so sizes and overlaps are those the detector meets. Run by hand:

    python benchmarks/bench_nms.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from bench_detector import DEFAULT_VIDEO, decode

from engines.config import RuntimeConfig
from engines.mtcnn.detector import MTCNNDetector, normalise
from engines.mtcnn.nms import Overlap, nms_numpy, nms_opencv
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import PNET


def main() -> None:
    frames = decode(DEFAULT_VIDEO)[::25]
    with EngineRuntime(RuntimeConfig(device="cpu", workers=1)) as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        sets = []
        for frame in frames:
            image = normalise(frame[:, :, ::-1].copy(), PNET)
            work = detector._pyramid_work([image])
            found = detector._run_pnet([image], work[0])
            sets.append(np.concatenate(found[0]))
    print(f"{len(sets)} frames, stage-1 candidates per frame: median {int(statistics.median(map(len, sets)))}, "
          f"max {max(map(len, sets))}")
    print("| implementation | IoU 0.7, median us per call | identical kept set |")
    print("|---|---|---|")
    for name, fn in (
        ("numpy loop (vectorised per step)", lambda c: nms_numpy(c[:, :4], c[:, 4], 0.7, Overlap.UNION)),
        ("OpenCV cv2.dnn.NMSBoxes", lambda c: nms_opencv(c[:, :4], c[:, 4], 0.7)),
    ):
        times = []
        for _ in range(20):
            started = time.perf_counter()
            for cands in sets:
                fn(cands)
            times.append((time.perf_counter() - started) / len(sets) * 1e6)
        same = all(
            nms_numpy(c[:, :4], c[:, 4], 0.7, Overlap.UNION).tolist() == nms_opencv(c[:, :4], c[:, 4], 0.7).tolist()
            for c in sets
        )
        print(f"| {name} | {statistics.median(times):.0f} | {same} |")


if __name__ == "__main__":
    main()
