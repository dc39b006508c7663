"""Gallery search at 10k, 100k and 1M identities: queries/s and recall@1, against numpy.

The synthetic galleries look like real embeddings (``gallery/synthetic.py``): identity
centres drawn from a Gaussian fitted to real embeddings of the shared photos (computed
with the full pipeline at the start), one template per identity and probes as noisy
samples with the same-person cosine of ``pairs.csv``. Each size is timed with:

- numpy brute force (``probes @ templates.T``, in blocks): the exact answer;
- FaceStream's exact index (``IndexFlatIP``);
- FaceStream's IVF index at several ``nprobe``, the shipped one marked.

Queries go in batches (the worker searches every face of a batch of frames at once);
queries/s include grouping hits by identity as ``Gallery.search`` does, for top-1 (the
watch-list decision) and top-5. recall@1 is the
share of probes whose top identity equals numpy's. Memory is the index's serialised size.

Run by hand: ``python benchmarks/bench_gallery.py`` (1M takes a few minutes).
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import faiss
import numpy as np
from bench_detector import cpu_model

from engines import EngineRuntime, MTCNNDetector, MultiTaskNet, read_image_file
from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.runtime.engine import available_cpus
from gallery.gallery import best_per_identity
from gallery.index import IndexConfig, TemplateIndex
from gallery.synthetic import EmbeddingDistribution, samples

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/faces"


def real_embeddings(recognizer: Recognizer = DEFAULT_RECOGNIZER) -> np.ndarray:
    """Largest-face embeddings of the shared single-face photos."""
    manifest = (FACES_DIR / "MANIFEST.md").read_text()
    excluded = set(re.findall(r"\| `([^`]+)` \|[^\n]*(?:MULTI-FACE|NEGATIVE|VIDEO)", manifest))
    with (FACES_DIR / "labels.csv").open() as f:
        paths = [r["path"] for r in csv.DictReader(f) if r["path"] not in excluded]
    out = []
    with EngineRuntime() as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        net = MultiTaskNet.create(runtime=runtime, recognizer=recognizer)
        for path in paths:
            image = read_image_file(FACES_DIR / path)
            faces = detector.detect(image)
            if len(faces):
                out.append(net.analyze([image], [faces[int(faces.areas.argmax())]])[0].embeddings[0])
    return np.asarray(out)


def exact_top1(probes: np.ndarray, templates: np.ndarray, block: int = 200_000) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    best_score = np.full(len(probes), -np.inf, np.float32)
    best = np.zeros(len(probes), np.int64)
    for start in range(0, len(templates), block):
        scores = probes @ templates[start : start + block].T
        arg = scores.argmax(axis=1)
        value = scores[np.arange(len(probes)), arg]
        better = value > best_score
        best_score[better], best[better] = value[better], arg[better] + start
    return best, len(probes) / (time.perf_counter() - started)


def timed_search(
    index: TemplateIndex, probes: np.ndarray, ids: np.ndarray, owners: np.ndarray, batch: int, k: int
) -> tuple[np.ndarray, float]:
    top = np.empty(len(probes), dtype=object)
    started = time.perf_counter()
    for start in range(0, len(probes), batch):
        scores, hits = index.search(probes[start : start + batch], k)
        grouped = best_per_identity(scores, hits, ids, owners, k)
        top[start : start + batch] = [g[0][0] if g else None for g in grouped]
    return top, len(probes) / (time.perf_counter() - started)


def index_bytes(index: TemplateIndex) -> int:
    return int(faiss.serialize_index(index._cpu).nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 24, 28, 32, 48])
    args = parser.parse_args()
    distribution = EmbeddingDistribution.fit(real_embeddings())
    shipped = IndexConfig().nprobe
    print(f"Machine: {cpu_model()}, {available_cpus()} CPUs available, FAISS {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads); {args.queries} probes in batches of {args.batch}.")
    print()
    print("| identities | search | queries/s, top-1 | queries/s, top-5 | recall@1 | index memory |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rng = np.random.default_rng(size)
        centres = distribution.centres(size, rng)
        templates, _ = samples(centres, 1, rng)
        chosen = rng.choice(size, args.queries, replace=False)
        probes, _ = samples(centres[chosen], 1, rng)
        ids = np.arange(size, dtype=np.int64)
        owners = np.array([f"id{i}" for i in range(size)], dtype=object)
        truth, numpy_qps = exact_top1(probes, templates)
        truth_owner = owners[truth]
        print(f"| {size:,} | numpy brute force | {numpy_qps:,.0f} | | 1 (reference) | {templates.nbytes / 2**20:,.0f} MiB |")
        flat = TemplateIndex.build(ids, templates, 128, IndexConfig(ivf_min_templates=size + 1))
        top, qps = timed_search(flat, probes, ids, owners, args.batch, 1)
        _, qps5 = timed_search(flat, probes, ids, owners, args.batch, 5)
        print(f"| {size:,} | FaceStream exact (flat) | {qps:,.0f} | {qps5:,.0f} | {np.mean(top == truth_owner):.4f} | "
              f"{index_bytes(flat) / 2**20:,.0f} MiB |")
        del flat
        started = time.perf_counter()
        ivf = TemplateIndex.build(ids, templates, 128, IndexConfig(ivf_min_templates=1))
        build_s = time.perf_counter() - started
        nlist = IndexConfig().cells(size)
        for nprobe in args.nprobe:
            faiss.extract_index_ivf(ivf._cpu).nprobe = nprobe
            top, qps = timed_search(ivf, probes, ids, owners, args.batch, 1)
            _, qps5 = timed_search(ivf, probes, ids, owners, args.batch, 5)
            mark = " (shipped)" if nprobe == shipped else ""
            print(f"| {size:,} | FaceStream IVF{nlist} nprobe {nprobe}{mark} | {qps:,.0f} | {qps5:,.0f} | "
                  f"{np.mean(top == truth_owner):.4f} | {index_bytes(ivf) / 2**20:,.0f} MiB (built in {build_s:.0f} s) |")
        del ivf


if __name__ == "__main__":
    main()
