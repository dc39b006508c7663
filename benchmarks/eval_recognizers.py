"""dlib, SFace and fused recognizers side by side: calibration, verification and identification.

Every photo's largest face goes through FaceStream's own pipeline (MTCNN, then each
recognizer's alignment and network). Sets (``../shared/data/face_train``, research licence;
nothing is copied):

- CelebA ``val`` (350 people): the score statistics in ``engines.multitask.recognizers``
  (impostor mean and spread per model, hence the fusion weight and the tracker's gates);
- CelebA ``test`` (350 other people, 5 photos each): every genuine pair and every impostor
  pair (about 1.5 million); the shipped thresholds are the empirical impostor quantiles at
  FMR 1e-3 (watch list and 1:1 verification); reported: true-match rate at FMR 1e-3 and
  1e-4, d', accuracy at the shipped threshold;
- identification on ``test``: each person's first photo enrolled, the other four searched,
  plus the first photo of 1,000 ``train`` people (never enrolled) as strangers, at the
  shipped threshold and at FMR 1e-5 (what a 350-person watch list needs);
- ``../shared/data/faces/pairs.csv`` as an independent check at the CelebA thresholds.

Embeddings are cached in ``--cache`` (one .npz per set and model); ``--fresh`` recomputes.
Run by hand: ``python benchmarks/eval_recognizers.py [--processes 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gallery.calibration import calibrate, labelled_pair_scores

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CELEBA = SHARED / "data/face_train/labels_celeba.csv"
PAIRS = SHARED / "data/faces/pairs.csv"
MODELS = ("dlib", "sface")
STRANGERS = 1000
FMRS = (1e-3, 1e-4)


def _embed_chunk(paths: list[str]) -> dict[str, np.ndarray]:
    """Unit dlib and SFace embeddings of each photo's largest face (NaN rows: no face)."""
    from engines import EngineRuntime, MTCNNDetector, RuntimeConfig, read_image_file
    from engines.config import Recognizer
    from engines.multitask.network import MultiTaskNet

    out = {m: np.full((len(paths), 128), np.nan, np.float32) for m in MODELS}
    with EngineRuntime(RuntimeConfig(workers=1)) as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        nets = {"dlib": MultiTaskNet.create(runtime=runtime, recognizer=Recognizer.DLIB),
                "sface": MultiTaskNet.create(runtime=runtime, recognizer=Recognizer.SFACE)}
        for i, path in enumerate(paths):
            image = read_image_file(Path(path))
            faces = detector.detect(image)
            if len(faces) == 0:
                continue
            largest = faces[int(np.argmax(faces.areas))]
            for model, net in nets.items():
                out[model][i] = net.analyze([image], [largest])[0].embeddings[0]
    return out


def spaces() -> np.ndarray:
    """The embedding-space ids of the cached models (a cache of other spaces is recomputed)."""
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    return np.array([profile(Recognizer.DLIB).model_id, profile(Recognizer.SFACE).model_id])


def embed(paths: list[Path], cache: Path, name: str, processes: int, fresh: bool) -> dict[str, np.ndarray]:
    file = cache / f"{name}.npz"
    keys = np.array([str(p) for p in paths])
    if file.exists() and not fresh:
        stored = np.load(file, allow_pickle=False)
        if np.array_equal(stored["paths"], keys) and np.array_equal(stored.get("spaces"), spaces()):
            return {m: stored[m] for m in MODELS}
    started = time.monotonic()
    chunks = [list(map(str, paths[i::processes * 8])) for i in range(processes * 8)]
    result = {m: np.empty((len(paths), 128), np.float32) for m in MODELS}
    with ProcessPoolExecutor(processes) as pool:
        for k, part in enumerate(pool.map(_embed_chunk, chunks)):
            for m in MODELS:
                result[m][k :: processes * 8] = part[m]
            print(f"  {name}: {min(len(paths), (k + 1) * len(paths) // len(chunks))}/{len(paths)} photos "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, paths=keys, spaces=spaces(), **result)
    return result


def stranger_rows(rows: list[dict[str, str]]) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    """The first ``STRANGERS`` people of CelebA's ``train`` split (never enrolled anywhere):
    identity -> their first photo's row, and the rows of their other photos."""
    first: dict[str, dict[str, str]] = {}
    rest: list[dict[str, str]] = []
    for r in rows:
        if r["split"] != "train":
            continue
        if r["identity"] not in first:
            if len(first) < STRANGERS:
                first[r["identity"]] = r
        else:
            rest.append(r)
    return first, rest


def print_report(report: dict[str, Any], path: Path | None) -> None:
    """The report as JSON on standard output, and in ``path`` if given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def with_fused(emb: dict[str, np.ndarray], weight: float) -> dict[str, np.ndarray]:
    from engines.multitask.recognizers import fuse

    return {**emb, "fused": fuse(emb["dlib"], emb["sface"], weight)}


def pair_scores(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every genuine and every impostor pair among photos with a face."""
    ok = ~np.isnan(vectors).any(axis=1)
    n = int(ok.sum())
    scores, same = labelled_pair_scores(vectors[ok], labels[ok], max_impostors=n * (n - 1) // 2)
    return scores[same], scores[~same]


def stats(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    return {"impostor_mean": float(impostor.mean()), "impostor_std": float(impostor.std(ddof=1)),
            "genuine_mean": float(genuine.mean()), "genuine_std": float(genuine.std(ddof=1)),
            "impostor_q99": float(np.quantile(impostor, 0.99)), "impostor_q999": float(np.quantile(impostor, 0.999))}


def d_prime(genuine: np.ndarray, impostor: np.ndarray) -> float:
    return float((genuine.mean() - impostor.mean()) / np.sqrt((genuine.var() + impostor.var()) / 2))


def threshold_at(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> float:
    """The threshold ``facestream gallery calibrate`` sets for ``fmr`` (the empirical impostor quantile)."""
    result = calibrate(np.concatenate([genuine, impostor]),
                       np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]), fmr)
    if result.method != "empirical":
        raise SystemExit(f"{len(impostor)} impostor pairs cannot resolve an FMR of {fmr}")
    return result.threshold


def identification(vectors: np.ndarray, labels: np.ndarray, strangers: np.ndarray, threshold: float) -> dict[str, Any]:
    ok = ~np.isnan(vectors).any(axis=1)
    people = list(dict.fromkeys(labels))
    enrolled_rows = [int(np.flatnonzero(labels == p)[0]) for p in people]
    enrolled_rows = [r for r in enrolled_rows if ok[r]]
    gallery, names = vectors[enrolled_rows], labels[enrolled_rows]
    probes = [r for r in range(len(labels)) if r not in set(enrolled_rows) and labels[r] in set(names)]
    correct = wrong = missed = 0
    for r in probes:
        if not ok[r]:
            missed += 1
            continue
        sims = gallery @ vectors[r]
        best = int(np.argmax(sims))
        if sims[best] < threshold:
            missed += 1
        elif names[best] == labels[r]:
            correct += 1
        else:
            wrong += 1
    s = strangers[~np.isnan(strangers).any(axis=1)]
    matched = int(((s @ gallery.T).max(axis=1) >= threshold).sum())
    return {"enrolled": len(names), "probes": len(probes), "correct": correct, "wrong_name": wrong,
            "not_named": missed, "strangers": len(strangers), "strangers_with_face": len(s),
            "strangers_matched": matched}


def time_per_face(processes: int) -> dict[str, float]:
    """ms per face of each embedding net alone (1 thread, batches of 8 aligned chips)."""
    from engines import EngineRuntime, ModelStore, RuntimeConfig
    from engines.store.catalog import EMBEDDING, MULTITASK, SFACE, SFACE_BUNDLE

    out = {}
    rng = np.random.default_rng(0)
    with EngineRuntime(RuntimeConfig(workers=1)) as runtime:
        store = ModelStore()
        for model, bundle, spec in (("dlib", MULTITASK, EMBEDDING), ("sface", SFACE_BUNDLE, SFACE)):
            installed = store.ensure(bundle)
            net = runtime.load(installed.path(spec), name=spec.name)
            shape = [8 if d == "batch" else d for d in spec.inputs[0].shape]
            x = rng.uniform(0, 1, shape).astype(np.float32)
            net.run({spec.input_name: x})
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < 3.0:
                net.run({spec.input_name: x})
                n += 8
            out[model] = 1000 * (time.perf_counter() - started) / n
    out["fused"] = out["dlib"] + out["sface"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(".eval-cache"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from engines.config import Recognizer
    from engines.multitask.recognizers import ScoreStats, fusion_weight, profile

    with CELEBA.open() as f:
        rows = list(csv.DictReader(f))
    root = CELEBA.parent
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("val", "test")}
    first_photos = list(stranger_rows(rows)[0].values())
    with PAIRS.open() as f:
        pair_rows = list(csv.DictReader(f))
    pair_paths = sorted({PAIRS.parent / r[k] for r in pair_rows for k in ("path_a", "path_b")})

    sets = {
        "celeba-val": [root / r["path"] for r in by_split["val"]],
        "celeba-test": [root / r["path"] for r in by_split["test"]],
        "celeba-strangers": [root / r["path"] for r in first_photos],
        "pairs": pair_paths,
    }
    emb = {name: embed(paths, args.cache, name, args.processes, args.fresh) for name, paths in sets.items()}
    labels = {s: np.array([r["identity"] for r in by_split[s]]) for s in by_split}

    # 1. statistics on val -> fusion weight
    val = {m: stats(*pair_scores(emb["celeba-val"][m], labels["val"])) for m in MODELS}
    measured = fusion_weight(*(ScoreStats(**{k: v[k] for k in ScoreStats.__dataclass_fields__})
                               for v in (val["dlib"], val["sface"])))
    weight = profile(Recognizer.FUSED).fusion_weight
    if abs(measured - weight) > 5e-4:
        print(f"note: val gives a fusion weight of {measured:.4f}; the shipped fused recognizer uses {weight:.4f}",
              file=sys.stderr)
    for name in emb:
        emb[name] = with_fused(emb[name], weight)
    val["fused"] = stats(*pair_scores(emb["celeba-val"]["fused"], labels["val"]))

    # 2. calibration and verification on test; 3. identification; 4. pairs.csv
    pair_index = {p: i for i, p in enumerate(pair_paths)}
    ia = np.array([pair_index[PAIRS.parent / r["path_a"]] for r in pair_rows])
    ib = np.array([pair_index[PAIRS.parent / r["path_b"]] for r in pair_rows])
    same = np.array([r["same"] == "1" for r in pair_rows])
    speed = time_per_face(args.processes)
    report: dict[str, Any] = {"fusion_weight_dlib": weight, "fusion_weight_from_val": measured, "val_stats": val,
                              "models": {}}
    for m in ("dlib", "sface", "fused"):
        genuine, impostor = pair_scores(emb["celeba-test"][m], labels["test"])
        thresholds = {fmr: threshold_at(genuine, impostor, fmr) for fmr in FMRS}
        shipped = thresholds[1e-3]
        balanced = np.concatenate([genuine >= shipped, impostor < shipped])
        pv = emb["pairs"][m]
        ps = np.einsum("ij,ij->i", pv[ia], pv[ib])
        ok = ~np.isnan(ps)
        report["models"][m] = {
            "celeba_test": {
                "genuine_pairs": len(genuine), "impostor_pairs": len(impostor),
                "photos_without_face": int(np.isnan(emb["celeba-test"][m]).any(axis=1).sum()),
                "thresholds": {str(k): v for k, v in thresholds.items()},
                "tmr": {str(fmr): float(np.mean(genuine >= t)) for fmr, t in thresholds.items()},
                "d_prime": d_prime(genuine, impostor),
                "accuracy_at_shipped_balanced": float(0.5 * (np.mean(genuine >= shipped) + np.mean(impostor < shipped))),
                "accuracy_at_shipped_all_pairs": float(balanced.mean()),
                **stats(genuine, impostor),
            },
            "pairs_csv": {
                "pairs": int(ok.sum()),
                "tmr_at_celeba_thresholds": {str(f): float(np.mean(ps[ok & same] >= t)) for f, t in thresholds.items()},
                "fmr_at_celeba_thresholds": {str(f): float(np.mean(ps[ok & ~same] >= t)) for f, t in thresholds.items()},
                "accuracy_at_shipped": float(np.mean((ps[ok] >= shipped) == same[ok])),
                "d_prime": d_prime(ps[ok & same], ps[ok & ~same]),
            },
            "identification": identification(emb["celeba-test"][m], labels["test"],
                                              emb["celeba-strangers"][m], shipped),
            # a watch list compares each face with every enrolled person: for 350 people, a per-comparison
            # FMR of 1e-5 keeps strangers' false alarms near 350 x 1e-5 = 0.35%
            "identification_at_fmr_1e-5": identification(emb["celeba-test"][m], labels["test"],
                                                          emb["celeba-strangers"][m],
                                                          threshold_at(genuine, impostor, 1e-5)),
            "threshold_at_fmr_1e-5": threshold_at(genuine, impostor, 1e-5),
            "ms_per_face": speed[m],
        }
    print_report(report, args.json)


if __name__ == "__main__":
    main()
