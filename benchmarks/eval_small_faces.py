"""Do small, low-quality faces break the calibrated threshold? Scores of CelebA ``test`` faces
shrunk to a given face width, against each person's full-size enrolment photo.

For each face width (native, and the face scaled to 64, 48, 36 and 28 px across its
detector box, on a grey canvas as a small face in a frame), every photo's largest face goes
through FaceStream's pipeline (MTCNN, the recognizer's alignment and network, the quality
score). Enrolled: each person's first photo at full size. Reported per width and per
quality bin: the face quality, the true-match rate of the other four photos at the shipped
watch-list threshold, and the false-match rate of every probe against every other person's
enrolment (the FMR the threshold was calibrated to: 1e-3 at full size).

Run by hand: ``python benchmarks/eval_small_faces.py [--recognizer R] [--widths 0 64 48 36 28] [--blur 1.5]``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from engines import EngineRuntime, MTCNNDetector, RuntimeConfig, read_image_file
from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.multitask.network import MultiTaskNet
from engines.multitask.recognizers import profile
from gallery.defaults import DEFAULT_CALIBRATIONS

CELEBA = Path(__file__).resolve().parents[1].parent / "shared/data/face_train/labels_celeba.csv"
WIDTHS = (None, 64, 48, 36, 28)
QUALITY_BINS = (0.0, 0.2, 0.25, 0.3, 0.4, 1.01)


def shrink(image: np.ndarray, box: np.ndarray, width: int, blur: float = 0.0) -> np.ndarray:
    """The photo scaled so the face box is ``width`` px wide (then blurred by a Gaussian of
    ``blur`` px, as out of focus or moving), on a 320 px grey canvas."""
    scale = width / max(box[2] - box[0], 1.0)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if blur > 0:
        small = cv2.GaussianBlur(small, (0, 0), blur)
    canvas = np.full((320, 320, 3), 114, np.uint8)
    h, w = min(small.shape[0], 320), min(small.shape[1], 320)
    canvas[:h, :w] = small[:h, :w]
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recognizer", type=Recognizer, default=DEFAULT_RECOGNIZER)
    parser.add_argument("--people", type=int, default=350)
    parser.add_argument("--widths", type=int, nargs="+", default=[0, *WIDTHS[1:]],
                        help="face widths in px (0: the photo as it is)")
    parser.add_argument("--blur", type=float, default=0.0, help="Gaussian blur (px) after shrinking")
    args = parser.parse_args()
    space = profile(args.recognizer)
    threshold = DEFAULT_CALIBRATIONS[space.model_id].threshold
    with CELEBA.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    people = list(dict.fromkeys(r["identity"] for r in rows))[: args.people]
    rows = [r for r in rows if r["identity"] in set(people)]
    report = {}
    with EngineRuntime(RuntimeConfig(device="cpu")) as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        net = MultiTaskNet.create(runtime=runtime, recognizer=args.recognizer)
        photos = {}
        for r in rows:
            image = read_image_file(CELEBA.parent / r["path"])
            faces = detector.detect(image)
            if len(faces):
                photos[r["path"]] = (r["identity"], image, faces.boxes[int(np.argmax(faces.areas))])
        enrolled: dict[str, np.ndarray] = {}
        probes: list[tuple[str, str]] = []
        for path, (who, _, _) in photos.items():
            if who not in enrolled:
                enrolled[who] = np.empty(0)
                enrolled[who] = path  # type: ignore[assignment]
            else:
                probes.append((path, who))

        def embed(image: np.ndarray) -> tuple[np.ndarray, float] | None:
            faces = detector.detect(image)
            if len(faces) == 0:
                return None
            a = net.analyze([image], [faces[[int(np.argmax(faces.areas))]]])[0]
            return a.embeddings[0], float(a.qualities[0])

        names = list(enrolled)
        gallery = np.stack([embed(photos[enrolled[n]][1])[0] for n in names])  # type: ignore[index]
        for width in [w or None for w in args.widths]:
            found = []
            for path, who in probes:
                _, image, box = photos[path]
                result = embed(image if width is None else shrink(image, box, width, args.blur))
                if result is not None:
                    found.append((who, *result))
            if not found:
                continue
            quality = np.array([q for _, _, q in found])
            scores = np.stack([e for _, e, _ in found]) @ gallery.T
            own = np.array([names.index(w) for w, _, _ in found])
            genuine = scores[np.arange(len(found)), own]
            mask = np.ones_like(scores, bool)
            mask[np.arange(len(found)), own] = False
            bins = {}
            for lo, hi in zip(QUALITY_BINS[:-1], QUALITY_BINS[1:]):
                sel = (quality >= lo) & (quality < hi)
                if sel.sum():
                    bins[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = {
                        "faces": int(sel.sum()), "tmr": round(float(np.mean(genuine[sel] >= threshold)), 3),
                        "fmr": float(np.mean(scores[sel][mask[sel]] >= threshold)),
                        "impostor_comparisons": int(mask[sel].sum()),
                    }
            report[str(width or "native")] = {
                "probes": len(probes), "faces_found": len(found), "quality_median": round(float(np.median(quality)), 3),
                "tmr": round(float(np.mean(genuine >= threshold)), 3), "fmr": float(np.mean(scores[mask] >= threshold)),
                "by_quality": bins,
            }
            print(width, json.dumps(report[str(width or "native")]), flush=True)
    print(json.dumps({"recognizer": space.model_id, "threshold": threshold, "blur": args.blur, "by_width": report},
                     indent=2))


if __name__ == "__main__":
    main()
