"""Memory held between calls, with and without ``runtime.release_memory``.

The detector runs over every photo under ``../shared/data/faces`` (152 photos of many sizes,
up to 3000x2000) in a fresh process per setting, and reports the resident memory after the
last photo, its peak and the time taken. With the setting off, ONNX Runtime keeps buffers for
the largest input seen; with it on, the arena is shrunk and the C heap trimmed after each call.

Run by hand: ``python benchmarks/bench_release_memory.py [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_detector import cpu_model

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/faces"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def resident_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def measure(release: bool) -> dict[str, float]:
    from engines import EngineRuntime, ModelStore, MTCNNDetector, RuntimeConfig, read_image_file

    detector = MTCNNDetector.create(runtime=EngineRuntime(RuntimeConfig(release_memory=release)), store=ModelStore())
    photos = sorted(p for p in FACES_DIR.rglob("*") if p.suffix.lower() in SUFFIXES)
    started, peak, done = time.perf_counter(), 0, 0
    for path in photos:
        try:
            image = read_image_file(path)
        except ValueError:
            continue
        detector.detect(image)
        done += 1
        peak = max(peak, resident_mib())
    return {"photos": done, "end_mib": resident_mib(), "peak_mib": peak, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both settings")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "on")))
        return
    print(f"{cpu_model()}, {os.cpu_count()} CPUs")
    for _ in range(args.rounds):
        for setting in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", setting], check=True, capture_output=True,
                                 text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"release_memory {setting:3}: {r['photos']} photos, {r['end_mib']} MiB resident after, "
                  f"peak {r['peak_mib']} MiB, {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
