"""Face verification on labelled pairs: cross-validated accuracy and the shipped threshold.

For every pair in ``pairs.csv`` (334 pairs: 167 same person, 167 different), the largest
face of each photo goes through the full pipeline (MTCNN, the recognizer's alignment and
network); the score is the cosine similarity of the L2-normalised embeddings.

Reported:

- 10-fold cross-validated accuracy: the threshold is fitted on 9 folds (maximum
  accuracy, midpoint of the best interval) and tested on the 10th, so no pair is scored
  with a threshold fitted on itself;
- the maximum-accuracy threshold fitted on all pairs (same rule);
- the accuracy at the shipped 1:1 threshold (set on CelebA, ``benchmarks/eval_recognizers.py``);
- for dlib, dlib's own rule (Euclidean distance < 0.6 on its raw descriptors).

Run by hand: ``python benchmarks/eval_verification.py [--pairs CSV] [--recognizer R]``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from engines import EngineRuntime, MTCNNDetector, read_image_file
from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.multitask.network import MultiTaskNet
from engines.multitask.recognizers import profile
from engines.multitask.verification import fit_threshold

DEFAULT_PAIRS = Path(__file__).resolve().parents[1].parent / "shared/data/faces/pairs.csv"


def largest_face_descriptors(paths: list[Path], runtime: EngineRuntime,
                             recognizer: Recognizer = DEFAULT_RECOGNIZER) -> dict[Path, np.ndarray]:
    detector = MTCNNDetector.create(runtime=runtime)
    multitask = MultiTaskNet.create(runtime=runtime, recognizer=recognizer)
    out = {}
    for path in paths:
        image = read_image_file(path)
        faces = detector.detect(image)
        if len(faces) == 0:
            raise SystemExit(f"{path}: no face found")
        largest = faces[int(np.argmax(faces.areas))]
        out[path] = multitask.analyze([image], [largest])[0].descriptors[0]
    return out


def cross_validated_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(scores))
    correct = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        threshold = fit_threshold(scores[train], same[train])
        correct += int(((scores[test] >= threshold) == same[test]).sum())
    return correct / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    parser.add_argument("--recognizer", type=Recognizer, default=DEFAULT_RECOGNIZER)
    args = parser.parse_args()
    with args.pairs.open() as f:
        rows = list(csv.DictReader(f))
    root = args.pairs.parent
    paths = sorted({root / r[key] for r in rows for key in ("path_a", "path_b")})
    with EngineRuntime() as runtime:
        descriptors = largest_face_descriptors(paths, runtime, args.recognizer)
    a = np.stack([descriptors[root / r["path_a"]] for r in rows])
    b = np.stack([descriptors[root / r["path_b"]] for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    similarity = (unit_a * unit_b).sum(axis=1)
    distance = np.linalg.norm(a - b, axis=1)
    fitted = fit_threshold(similarity, same)
    print(f"{len(rows)} pairs ({same.sum()} same, {(~same).sum()} different), {len(paths)} photos")
    print(f"cosine similarity, same person:      {similarity[same].mean():.3f} +- {similarity[same].std():.3f} "
          f"(min {similarity[same].min():.3f})")
    print(f"cosine similarity, different people: {similarity[~same].mean():.3f} +- {similarity[~same].std():.3f} "
          f"(max {similarity[~same].max():.3f})")
    print(f"10-fold cross-validated accuracy:     {cross_validated_accuracy(similarity, same):.3f}")
    print(f"threshold fitted on all pairs:         {fitted:.4f}")
    shipped = profile(args.recognizer).verify_threshold
    print(f"shipped 1:1 threshold (FMR 1e-3, CelebA): {shipped:.4f}, accuracy {np.mean((similarity >= shipped) == same):.3f}")
    if args.recognizer is Recognizer.DLIB:
        print(f"dlib's rule (raw distance < 0.6):      accuracy {np.mean((distance < 0.6) == same):.3f}")


if __name__ == "__main__":
    main()
