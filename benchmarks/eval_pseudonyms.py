"""Pseudonyms for strangers, measured: how the sightings store's linking rules group faces of
people it was never told about.

Every photo of 1,000 CelebA ``train`` people (``../shared/data/face_train``, research licence;
nothing is copied; about 5 photos each, their largest face through FaceStream's pipeline) is
added to a fresh sightings store as an unidentified sighting, in a random order over ten days.
Photos of one person vary far more than the frames of one track, so this is the hard case of
linking a person seen again on another day or camera. Reported per recognizer and link
threshold (the impostor quantile at a false-match rate per comparison, from CelebA ``test``):

- pseudonyms made, and pseudonyms holding more than one person (a wrong link);
- pair precision: of the pairs of sightings sharing a pseudonym, the share of one person;
- pair recall: of the pairs of sightings of one person, the share under one pseudonym;
- people split: the mean number of pseudonyms per person;

each with the link rule alone (the best score over a pseudonym's members reaches the
threshold) and with cohesion (also the face's mean best score over the members reaches the
watch list's threshold, FMR 1e-3), the shipped rule.

Embeddings come from ``eval_recognizers.py``'s cache (``--cache``; computed on first use).
Run by hand: ``python benchmarks/eval_pseudonyms.py [--cache DIR] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from eval_recognizers import CELEBA, embed, pair_scores, print_report, stranger_rows, threshold_at, with_fused

FMRS = (1e-5, 1e-4, 1e-3)
SEED = 7


def strangers(cache: Path, processes: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every photo of the first 1,000 ``train`` people: embeddings per model, and each photo's person."""
    with CELEBA.open() as f:
        rows = list(csv.DictReader(f))
    first, rest = stranger_rows(rows)
    root = CELEBA.parent
    a = embed([root / r["path"] for r in first.values()], cache, "celeba-strangers", processes, False)
    b = embed([root / r["path"] for r in rest], cache, "celeba-strangers-rest", processes, False)
    people = np.array([*first, *(r["identity"] for r in rest)])
    return {m: np.concatenate([a[m], b[m]]) for m in a}, people


def test_thresholds(cache: Path, processes: int) -> dict[str, dict[float, float]]:
    with CELEBA.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    emb = embed([CELEBA.parent / r["path"] for r in rows], cache, "celeba-test", processes, False)
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    emb = with_fused(emb, profile(Recognizer.FUSED).fusion_weight)
    labels = np.array([r["identity"] for r in rows])
    out = {}
    for m, v in emb.items():
        genuine, impostor = pair_scores(v, labels)
        out[m] = {fmr: threshold_at(genuine, impostor, fmr) for fmr in FMRS}
    return out


def run(vectors: np.ndarray, people: np.ndarray, space: str, threshold: float, cohesion: bool) -> dict[str, Any]:
    from gallery.sightings import Sighting, SightingsStore

    ok = np.flatnonzero(~np.isnan(vectors).any(axis=1))
    order = np.random.default_rng(SEED).permutation(ok)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assigned: dict[int, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder, SightingsStore(Path(folder) / "s", link_thresholds={space: threshold},
                                                                 cohesion=cohesion) as store:
        for n, i in enumerate(order):
            at = start + timedelta(seconds=int(n * 10 * 86400 / len(order)))
            stored = store.add(Sighting(
                sighting_id=f"cam:track:{n + 1}:ended", stream_id="cam", track_id=n + 1, first_frame=0, last_frame=9,
                first_pts_ms=0.0, last_pts_ms=300.0, start_utc=at, end_utc=at + timedelta(seconds=1), frames=10,
                quality=0.8, space_id=space, vectors=vectors[i:i + 1]))
            assert stored is not None and stored.pseudonym is not None
        final = {s: store.get(f"cam:track:{n + 1}:ended").pseudonym for n, s in enumerate(order)}  # type: ignore[union-attr]
        assigned = {int(i): p for i, p in final.items() if p is not None}
    seconds = time.monotonic() - started
    by_pseudonym: dict[str, list[str]] = {}
    for i, p in assigned.items():
        by_pseudonym.setdefault(p, []).append(str(people[i]))
    same_pairs = sum(n * (n - 1) // 2 for n in Counter(people[list(assigned)]).values())
    shared = sum(len(m) * (len(m) - 1) // 2 for m in by_pseudonym.values())
    shared_same = sum(sum(c * (c - 1) // 2 for c in Counter(m).values()) for m in by_pseudonym.values())
    per_person: dict[str, set[str]] = {}
    for i, p in assigned.items():
        per_person.setdefault(str(people[i]), set()).add(p)
    return {
        "sightings": len(assigned), "people": len(per_person), "pseudonyms": len(by_pseudonym),
        "pseudonyms_with_two_or_more_people": sum(len(set(m)) > 1 for m in by_pseudonym.values()),
        "pair_precision": round(shared_same / shared, 4) if shared else None,
        "pair_recall": round(shared_same / same_pairs, 4) if same_pairs else None,
        "pseudonyms_per_person": round(float(np.mean([len(v) for v in per_person.values()])), 3),
        "ms_per_sighting": round(seconds * 1000 / max(len(assigned), 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(".eval-cache"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    vectors, people = strangers(args.cache, args.processes)
    vectors = with_fused(vectors, profile(Recognizer.FUSED).fusion_weight)
    thresholds = test_thresholds(args.cache, args.processes)
    spaces = {"dlib": Recognizer.DLIB, "sface": Recognizer.SFACE, "fused": Recognizer.FUSED}
    report: dict[str, Any] = {}
    for m, recognizer in spaces.items():
        report[m] = {}
        for fmr in FMRS:
            for cohesion in (False, True):
                key = f"{fmr}{' cohesion' if cohesion else ''}"
                result = run(vectors[m], people, profile(recognizer).model_id, thresholds[m][fmr], cohesion)
                report[m][key] = {"threshold": round(thresholds[m][fmr], 4), **result}
                print(m, key, json.dumps(report[m][key]), file=sys.stderr, flush=True)
    print_report(report, args.json)


if __name__ == "__main__":
    main()
