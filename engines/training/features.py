"""The trunk run once over a labelled set: ``facestream train features``.

For every image: FaceStream's own path at run time (MTCNN, the largest face, the ArcFace
chip from its 5 landmarks, the recognizer's ONNX graph), keeping the raw embedding and the
pooled trunk ``feature`` (see :mod:`engines.convert.sface`). Images smaller than the chip
(FER2013's 48 px faces) are first enlarged to it, as a camera frame's small faces are by
the chip warp. Images with no face found are kept with ``found`` false (training skips
them, the report counts them); an unreadable or missing image is logged, kept with
``unreadable`` true, and does not stop the run.

The cache is a folder of shards (``shard-00000.npz``, numpy arrays only: no pickle), each
written once; an interrupted run resumes at the first missing shard. ``cache.json`` names
the set's label digest and the trunk, so a cache is never mixed across sets or trunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from engines.errors import FaceStreamError
from engines.training.data import LabelledSet

log = logging.getLogger(__name__)

SHARD = 500
"""Images per shard (about 40 s of work on one core)."""
INFO = "cache.json"


@dataclass(frozen=True)
class FeatureCache:
    """Trunk outputs for every image of a :class:`LabelledSet`, in its row order."""

    embedding: np.ndarray
    """(N, D) raw embeddings (not normalised); NaN where no face was found."""
    feature: np.ndarray
    """(N, F) float16 pooled trunk activations; 0 where no face was found."""
    found: np.ndarray
    trunk: str
    unreadable: np.ndarray | None = None
    """Images that could not be read (None for a cache written before this was recorded)."""

    @cached_property
    def trunk_inputs(self) -> np.ndarray:
        """``[unit embedding, feature]`` per image, float32 (zeros where no face was found);
        computed once per cache (the heads' input)."""
        emb = np.nan_to_num(self.embedding.astype(np.float32))
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return np.concatenate([emb, self.feature.astype(np.float32)], axis=1)


def _trunk_outputs(paths: list[str], root: str, store_home: str | None = None) -> dict[str, np.ndarray]:
    """One shard's embeddings and features (runs in a worker process)."""
    import cv2

    from engines import EngineRuntime, MTCNNDetector, RuntimeConfig, read_image_file
    from engines.image import to_rgb
    from engines.multitask.align import arcface_chip
    from engines.store.catalog import SFACE, SFACE_BUNDLE, SFACE_FEATURE, SFACE_FEATURE_DIM
    from engines.store.model_store import ModelStore

    n = len(paths)
    emb = np.full((n, SFACE.outputs[0].shape[1]), np.nan, np.float32)
    feat = np.zeros((n, SFACE_FEATURE_DIM), np.float16)
    found = np.zeros(n, bool)
    unreadable = np.zeros(n, bool)
    with EngineRuntime(RuntimeConfig(workers=1)) as runtime:
        store = ModelStore(Path(store_home)) if store_home else ModelStore()
        detector = MTCNNDetector.create(runtime=runtime, store=store)
        bundle = store.ensure(SFACE_BUNDLE)
        sface = runtime.load(bundle.path(bundle.spec(SFACE)), name=SFACE.name)
        chips, rows = [], []
        for i, rel in enumerate(paths):
            try:
                image = read_image_file(Path(root) / rel)
            except (FaceStreamError, OSError) as exc:
                log.warning("skipping %s: %s", rel, exc)
                unreadable[i] = True
                continue
            side = min(image.shape[:2])
            if side < SFACE.chip.size:
                factor = math.ceil(SFACE.chip.size / side)
                image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            faces = detector.detect(image)
            if len(faces) == 0:
                continue
            k = int(np.argmax(faces.areas))
            chips.append(arcface_chip(to_rgb(image, "bgr"), faces.landmarks[k], SFACE.chip.size, faces.boxes[k]))
            rows.append(i)
        if rows:
            x = np.stack(chips).astype(np.float32).transpose(0, 3, 1, 2)
            for start in range(0, len(rows), 32):
                out = sface.run({SFACE.input_name: np.ascontiguousarray(x[start : start + 32])})
                idx = rows[start : start + 32]
                emb[idx] = out[SFACE.outputs[0].name]
                feat[idx] = out[SFACE_FEATURE].astype(np.float16)
            found[rows] = True
    return {"embedding": emb, "feature": feat, "found": found, "unreadable": unreadable}


def extract(data: LabelledSet, cache: Path, *, processes: int = 2, store_home: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> FeatureCache:
    """Run the trunk over ``data`` into ``cache`` (resuming a partial cache) and return it."""
    from engines.store.catalog import SFACE_BUNDLE

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    trunk = f"{SFACE_BUNDLE.name}-v{SFACE_BUNDLE.version}"
    info = {"labels_sha256": data.digest(), "images": len(data), "trunk": trunk, "shard": SHARD,
            "paths_sha256": _paths_digest(data.paths)}
    info_file = cache / INFO
    if info_file.exists():
        stored = json.loads(info_file.read_text())
        if stored != info:
            raise FaceStreamError(f"{cache} holds features of another set or trunk ({stored.get('trunk')}, "
                                  f"{stored.get('images')} images); use an empty folder")
    else:
        info_file.write_text(json.dumps(info, indent=2) + "\n")
    shards = [list(data.paths[s : s + SHARD]) for s in range(0, len(data), SHARD)]
    todo = [k for k in range(len(shards)) if not (cache / f"shard-{k:05d}.npz").exists()]
    done = len(data) - sum(len(shards[k]) for k in todo)
    if progress:
        progress(done, len(data))
    started = time.monotonic()
    if todo:
        with ProcessPoolExecutor(max(1, processes)) as pool:
            futures = {k: pool.submit(_trunk_outputs, shards[k], str(data.root),
                                      None if store_home is None else str(store_home)) for k in todo}
            for k in todo:
                out = futures[k].result()
                tmp = cache / f"shard-{k:05d}.tmp.npz"
                np.savez(tmp, **out)
                tmp.replace(cache / f"shard-{k:05d}.npz")
                done += len(shards[k])
                if progress:
                    progress(done, len(data))
        log.info("trunk features for %d images in %.0f s", sum(len(shards[k]) for k in todo),
                 time.monotonic() - started)
    return read(data, cache)


def read(data: LabelledSet, cache: Path) -> FeatureCache:
    """The complete cache of ``data`` (refused if incomplete or of another set)."""
    cache = Path(cache)
    try:
        info = json.loads((cache / INFO).read_text())
    except (OSError, ValueError) as exc:
        raise FaceStreamError(f"{cache} is not a feature cache (run `facestream train features`): {exc}") from exc
    if info.get("paths_sha256") != _paths_digest(data.paths) or info.get("labels_sha256") != data.digest():
        raise FaceStreamError(f"{cache} holds features of another labelled set")
    parts = []
    for k in range(math.ceil(len(data) / info["shard"])):
        file = cache / f"shard-{k:05d}.npz"
        if not file.exists():
            raise FaceStreamError(f"{cache} is incomplete ({file.name} missing): run `facestream train features` again")
        with np.load(file, allow_pickle=False) as z:
            part = {name: z[name] for name in ("embedding", "feature", "found")}
            part["unreadable"] = z["unreadable"] if "unreadable" in z.files else np.zeros(len(part["found"]), bool)
            parts.append(part)
    columns = {name: np.concatenate([p[name] for p in parts]) for name in ("embedding", "feature", "found", "unreadable")}
    return FeatureCache(columns["embedding"], columns["feature"], columns["found"], info["trunk"], columns["unreadable"])


def _paths_digest(paths: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()
