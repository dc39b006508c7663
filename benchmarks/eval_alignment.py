"""Why FaceStream's dlib path scores below dlib's own pipeline with the same weights, and
which alignment to ship: dlib's recognizer under each alignment, on CelebA.

Variants (the embedding network is always dlib's ResNet; FaceStream's ONNX rebuild equals
dlib's within 1e-6 on the same chip, a test checks it):

- ``mtcnn-box-S``: dlib's 5-point landmark model run in the square of S x the MTCNN box
  (FaceStream's path, S = 1.0), chip cut by dlib;
- ``mtcnn-points``: MTCNN's own 5 points mapped by a similarity transform onto the points
  of dlib's chip template (no landmark model);
- ``dlib-own``: dlib's pipeline as ``face_recognition`` runs it: HOG detector (1
  upsampling), the 5-point model in the HOG box, ``get_face_chip(150, 0.25)``.

Each photo's largest face; a photo where a detector finds nothing counts as a miss for the
pairs that use it (reported). Chosen on ``val`` (true-match rate at FMR 1e-3, impostor
quantile of that split), reported on ``test`` with ``test``'s own threshold. Also on
``../shared/data/faces/pairs.csv`` (news photos, 334 pairs): d' and accuracy at the ``test``
threshold. For each variant against the shipped one, the genuine pairs only one of the two
accepts (each at its own threshold) show whether a difference is more than noise.
Run by hand: ``python benchmarks/eval_alignment.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np
from eval_recognizers import threshold_at

from engines import EngineRuntime, ModelStore, MTCNNDetector, RuntimeConfig, read_image_file
from engines.multitask.align import similarity_transform, square_box
from engines.multitask.network import _normalise
from engines.store.catalog import EMBEDDING, MULTITASK, SHAPE_PREDICTOR_FILE

CELEBA = Path(__file__).resolve().parents[1].parent / "shared/data/face_train/labels_celeba.csv"
PAIRS = CELEBA.parents[1] / "faces/pairs.csv"
SCALES = (0.8, 1.0, 1.2)


def tmr_at(genuine: np.ndarray, impostor: np.ndarray, fmr: float = 1e-3) -> tuple[float, float]:
    threshold = threshold_at(genuine, impostor, fmr)
    return float(np.mean(genuine >= threshold)), threshold


def pair_scores(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = ~np.isnan(vectors).any(axis=1)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    upper = np.triu_indices(len(v), 1)
    same = labels[upper[0]] == labels[upper[1]]
    usable = ok[upper[0]] & ok[upper[1]]
    scores = np.where(usable, sims[upper], -1.0)  # a miss scores -1: never a match
    return scores[same], scores[~same & usable]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with CELEBA.open() as f:
        rows = [{**r, "path": str(CELEBA.parent / r["path"])}
                for r in csv.DictReader(f) if r["split"] in ("val", "test")]
    with PAIRS.open() as f:
        pair_rows = list(csv.DictReader(f))
    pair_paths = sorted({str(PAIRS.parent / r[k]) for r in pair_rows for k in ("path_a", "path_b")})
    rows += [{"path": p, "split": "pairs", "identity": p} for p in pair_paths]
    store = ModelStore()
    installed = store.ensure(MULTITASK)
    predictor = dlib.shape_predictor(str(installed.directory / SHAPE_PREDICTOR_FILE))
    hog = dlib.get_frontal_face_detector()
    variants = [f"mtcnn-box-{s}" for s in SCALES] + ["mtcnn-points", "dlib-own"]
    vectors = {v: np.full((len(rows), 128), np.nan, np.float32) for v in variants}
    landmarks: dict[int, np.ndarray] = {}
    template_points: list[np.ndarray] = []
    with EngineRuntime(RuntimeConfig(device="cpu", workers=1)) as runtime:
        detector = MTCNNDetector.create(runtime=runtime, store=store)
        net = runtime.load(installed.path(EMBEDDING), name=EMBEDDING.name)

        def embed(chip: np.ndarray) -> np.ndarray:
            return net.run({EMBEDDING.input_name: _normalise(chip[None], EMBEDDING)})["descriptor"][0]

        for i, row in enumerate(rows):
            image = read_image_file(Path(row["path"]))
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            faces = detector.detect(image)
            if len(faces):
                k = int(np.argmax(faces.areas))
                landmarks[i] = faces.landmarks[k]
                for scale in SCALES:
                    shape = predictor(rgb, dlib.rectangle(*square_box(faces.boxes[k], scale)))
                    chip = np.asarray(dlib.get_face_chip(rgb, shape, 150, 0.25))
                    vectors[f"mtcnn-box-{scale}"][i] = embed(chip)
                    if scale == 1.0 and row["split"] == "val":  # MTCNN's points as they land in dlib's chip
                        on_chip = detector.detect(cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
                        if len(on_chip):
                            template_points.append(on_chip.landmarks[int(np.argmax(on_chip.areas))])
            boxes = hog(rgb, 1)
            if len(boxes):
                box = max(boxes, key=lambda b: b.area())
                vectors["dlib-own"][i] = embed(np.asarray(dlib.get_face_chip(rgb, predictor(rgb, box), 150, 0.25)))
        # MTCNN's 5 points onto their median place in dlib's chip (learnt on val), no landmark model
        template = np.median(np.array(template_points), axis=0)
        for i, points in landmarks.items():
            rgb = cv2.cvtColor(read_image_file(Path(rows[i]["path"])), cv2.COLOR_BGR2RGB)
            chip = cv2.warpAffine(rgb, similarity_transform(points, template), (150, 150), flags=cv2.INTER_LINEAR)
            vectors["mtcnn-points"][i] = embed(chip)
    report: dict[str, Any] = {}
    labels_all = np.array([r["identity"] for r in rows])
    for split in ("val", "test"):
        sel = np.array([r["split"] == split for r in rows])
        report[split] = {}
        scored = {}
        for name in variants:
            v = vectors[name][sel]
            genuine, impostor = pair_scores(v, labels_all[sel])
            tmr, threshold = tmr_at(genuine, impostor)
            scored[name] = (genuine, threshold)
            report[split][name] = {"tmr_at_fmr_1e-3": round(tmr, 4), "threshold": round(threshold, 4),
                                   "faces_missed": int(np.isnan(v).any(axis=1).sum())}
        base_genuine, base_threshold = scored["mtcnn-box-1.0"]
        for name in variants:
            genuine, threshold = scored[name]
            this, shipped = genuine >= threshold, base_genuine >= base_threshold
            report[split][name]["genuine_only_this"] = int(np.sum(this & ~shipped))
            report[split][name]["genuine_only_shipped"] = int(np.sum(~this & shipped))
        print(split, json.dumps(report[split]), flush=True)
    index = {r["path"]: i for i, r in enumerate(rows)}
    ia = np.array([index[str(PAIRS.parent / r["path_a"])] for r in pair_rows])
    ib = np.array([index[str(PAIRS.parent / r["path_b"])] for r in pair_rows])
    same = np.array([r["same"] == "1" for r in pair_rows])
    report["pairs"] = {}
    for name in variants:
        v = vectors[name] / np.linalg.norm(vectors[name], axis=1, keepdims=True)
        scores = np.einsum("ij,ij->i", v[ia], v[ib])
        ok = ~np.isnan(scores)
        g, i = scores[ok & same], scores[ok & ~same]
        report["pairs"][name] = {
            "pairs_with_faces": int(ok.sum()),
            "d_prime": round(float((g.mean() - i.mean()) / np.sqrt((g.var() + i.var()) / 2)), 3),
            "accuracy_at_test_threshold": round(float(np.mean((scores[ok] >= report["test"][name]["threshold"])
                                                              == same[ok])), 4)}
    print("pairs", json.dumps(report["pairs"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
