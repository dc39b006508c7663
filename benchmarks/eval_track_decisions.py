"""Track-level identity decisions on sets of several photos per person: votes, a lead, the mean embedding.

A track gives several embeddings of one person; the worker decides one identity per track.
This measures, on CelebA (``../shared/data/face_train``, research licence; nothing is copied),
the decision rules the recognition issue asked to consider, with each person's photos standing
in for a track's shots (photos of one person vary more than the frames of one track, so this is
the hard case for every rule):

- ``vote`` (what the worker does): each shot at or above the threshold votes for its best
  identity with its score; the identity with the most weight wins;
- ``vote, lead g``: a shot votes only when its best identity beats the second-best by ``g``
  impostor spreads of the recognizer;
- ``mean``: the normalised mean of the shots is searched once;
- ``vote+mean``: the mean's match is one more vote (its score as weight).

Tracks: each person's first photo enrolled, the next 1, 2 or 4 photos are the person's track;
stranger tracks: on ``test``, 1,000 ``train`` people never enrolled (their photos 2-5); on
``val`` (a second set), the ``test`` people. Two comparisons, per recognizer:

1. at fixed thresholds: the shipped one (FMR 1e-3 per comparison) for the votes, and for the
   mean a threshold calibrated on ``val`` at FMR 1e-3 for a mean of that many shots (the mean
   of one person's photos against one photo of each other person);
2. each rule at the threshold that names 1%, 5% and 20% of the stranger tracks: which rule
   names more people for the same false alarms.

Embeddings are shared with ``eval_recognizers.py`` (``--cache``; the strangers' photos 2-5 are
embedded on first use). Run by hand:
``python benchmarks/eval_track_decisions.py [--processes 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from eval_recognizers import CELEBA, MODELS, embed, pair_scores, print_report, stranger_rows, threshold_at, with_fused

FMR = 1e-3
SHOTS = (1, 2, 4)
MARGINS = (0.5, 1.0)
"""Margins in units of the recognizer's impostor spread (SFace 0.090, dlib 0.039, fused 0.044)."""
STRANGER_RATES = (0.01, 0.05, 0.2)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def with_face(v: np.ndarray) -> np.ndarray:
    return v[~np.isnan(v).any(axis=1)]


def people_rows(labels: np.ndarray) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(labels):
        rows.setdefault(str(p), []).append(i)
    return rows


def mean_threshold(vectors: np.ndarray, labels: np.ndarray, k: int, fmr: float) -> tuple[float, int]:
    """Impostor quantile of (normalised mean of k photos of A) . (one photo of B), over every choice."""
    ok = ~np.isnan(vectors).any(axis=1)
    singles, single_owner, means, mean_owner, genuine = [], [], [], [], []
    for owner, idx in enumerate(people_rows(labels).values()):
        idx = [i for i in idx if ok[i]]
        singles += [vectors[i] for i in idx]
        single_owner += [owner] * len(idx)
        for enrol in idx:
            rest = [i for i in idx if i != enrol]
            for combo in itertools.combinations(rest, k):
                m = unit(vectors[list(combo)].mean(axis=0))
                means.append(m)
                mean_owner.append(owner)
                genuine.append(float(m @ vectors[enrol]))
    if not means:
        raise SystemExit(f"no person has {k + 1} photos with a face")
    s, so = np.stack(singles), np.array(single_owner)
    impostor = np.concatenate([s[so != o] @ m for m, o in zip(means, mean_owner, strict=True)])
    return threshold_at(np.array(genuine), impostor, fmr), len(impostor)


@dataclass(frozen=True)
class Track:
    """A track's shots searched against the gallery: per shot the best identity, its score and
    its lead over the second-best identity; and the scores of the shots' normalised mean."""

    best: np.ndarray
    score: np.ndarray
    lead: np.ndarray
    mean_best: str
    mean_score: float

    @classmethod
    def search(cls, shots: np.ndarray, gallery: np.ndarray, names: np.ndarray) -> Track:
        sims = shots @ gallery.T
        order = np.argsort(-sims, axis=1)
        rows = np.arange(len(shots))
        top, second = sims[rows, order[:, 0]], sims[rows, order[:, 1]]
        mean = unit(shots.mean(axis=0)) @ gallery.T
        b = int(np.argmax(mean))
        return cls(names[order[:, 0]], top, top - second, str(names[b]), float(mean[b]))

    def naming_score(self, rule: str, lead: float) -> float:
        """The highest threshold at which ``rule`` still names this track (-inf: never)."""
        if rule == "mean":
            return self.mean_score
        ok = self.lead >= lead
        return float(self.score[ok].max()) if ok.any() else -np.inf

    def decide(self, rule: str, threshold: float, lead: float = 0.0, mean_threshold: float = np.inf) -> str | None:
        """``vote``: each shot at or above ``threshold`` whose lead is at least ``lead`` votes for its
        best identity with its score; ``mean``: the mean's best identity if at or above ``threshold``;
        ``vote+mean``: the votes plus the mean's match (at ``mean_threshold``) as one more vote."""
        weights: dict[str, float] = {}
        if rule in ("vote", "vote+mean"):
            for who, score, ahead in zip(self.best, self.score, self.lead, strict=True):
                if score >= threshold and ahead >= lead:
                    weights[str(who)] = weights.get(str(who), 0.0) + float(score)
        if rule in ("mean", "vote+mean"):
            if self.mean_score >= (threshold if rule == "mean" else mean_threshold):
                weights[self.mean_best] = weights.get(self.mean_best, 0.0) + self.mean_score
        return max(weights, key=lambda n: weights[n]) if weights else None


def track_sets(vectors: np.ndarray, labels: np.ndarray, strangers: list[np.ndarray], k: int
               ) -> tuple[list[tuple[str, Track]], list[Track]]:
    """Each person's first photo enrolled; their next k photos are a track; strangers' first k."""
    ok = ~np.isnan(vectors).any(axis=1)
    rows = people_rows(labels)
    enrolled = {p: idx[0] for p, idx in rows.items() if ok[idx[0]]}
    gallery, names = vectors[list(enrolled.values())], np.array(list(enrolled))
    known = []
    for person, enrol in enrolled.items():
        shots = [i for i in rows[person] if i != enrol and ok[i]][:k]
        if len(shots) == k:
            known.append((person, Track.search(vectors[shots], gallery, names)))
    unknown = [Track.search(t[:k], gallery, names) for t in strangers if len(t) >= k]
    return known, unknown


def tally(known: list[tuple[str, Track]], unknown: list[Track], decide: Any) -> dict[str, int]:
    out = {"tracks": len(known), "correct": 0, "wrong_name": 0, "not_named": 0,
           "stranger_tracks": len(unknown), "strangers_named": 0}
    for person, track in known:
        got = decide(track)
        out["correct" if got == person else "not_named" if got is None else "wrong_name"] += 1
    out["strangers_named"] = sum(decide(t) is not None for t in unknown)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(".eval-cache"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    with CELEBA.open() as f:
        rows = list(csv.DictReader(f))
    root = CELEBA.parent
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("val", "test")}
    first, rest = stranger_rows(rows)  # their photos after the first are the stranger tracks
    sets = {
        "celeba-val": [root / r["path"] for r in by_split["val"]],
        "celeba-test": [root / r["path"] for r in by_split["test"]],
        "celeba-strangers-rest": [root / r["path"] for r in rest],
    }
    weight = profile(Recognizer.FUSED).fusion_weight
    emb = {name: with_fused(embed(paths, args.cache, name, args.processes, False), weight)
           for name, paths in sets.items()}
    labels = {s: np.array([r["identity"] for r in by_split[s]]) for s in by_split}
    rest_owner = np.array([r["identity"] for r in rest])

    report: dict[str, Any] = {"fmr": FMR, "margins_in_impostor_sd": MARGINS, "models": {}}
    recognizer = {"dlib": Recognizer.DLIB, "sface": Recognizer.SFACE, "fused": Recognizer.FUSED}
    test_people = people_rows(labels["test"])
    for m in (*MODELS, "fused"):
        sd = profile(recognizer[m]).stats.impostor_std
        strangers = {"test": [with_face(emb["celeba-strangers-rest"][m][rest_owner == p]) for p in first],
                     "val": [with_face(emb["celeba-test"][m][idx]) for idx in test_people.values()]}
        single = {split: threshold_at(*pair_scores(emb[f"celeba-{split}"][m], labels[split]), FMR)
                  for split in ("val", "test")}
        result: dict[str, Any] = {"impostor_sd": sd, "threshold_single": single, "threshold_mean_from_val": {},
                                  "fixed_thresholds": {}, "matched_stranger_rates": {}}
        for k in SHOTS:
            t_mean, n_imp = mean_threshold(emb["celeba-val"][m], labels["val"], k, FMR)
            result["threshold_mean_from_val"][k] = t_mean
            print(f"{m}: mean of {k} shots, threshold {t_mean:.4f} from {n_imp} val impostor scores", file=sys.stderr)
            for split in ("test", "val"):
                known, unknown = track_sets(emb[f"celeba-{split}"][m], labels[split], strangers[split], k)
                t = single["test"] if split == "test" else single["val"]
                # 1. at the shipped per-comparison threshold (the mean at its own, calibrated on val)
                fixed = {"vote": tally(known, unknown, lambda tr, t=t: tr.decide("vote", t))}
                for lead in MARGINS:
                    fixed[f"vote, lead {lead} sd"] = tally(known, unknown,
                                                            lambda tr, t=t, g=lead * sd: tr.decide("vote", t, g))
                fixed["mean"] = tally(known, unknown, lambda tr, tm=t_mean: tr.decide("mean", tm))
                fixed["vote+mean"] = tally(known, unknown, lambda tr, t=t, tm=t_mean: tr.decide(
                    "vote+mean", t, mean_threshold=tm))
                result["fixed_thresholds"][f"{split}, {k} shots"] = fixed
                # 2. each rule at the threshold that names a given share of stranger tracks
                matched: dict[str, Any] = {}
                for rule, lead in (("vote", 0.0), *(("vote", g) for g in MARGINS), ("mean", 0.0)):
                    label = rule if lead == 0 else f"vote, lead {lead} sd"
                    scores = np.array([tr.naming_score(rule, lead * sd) for tr in unknown])
                    matched[label] = {}
                    for rate in STRANGER_RATES:
                        cut = float(np.quantile(scores, 1 - rate, method="higher")) + 1e-9
                        matched[label][str(rate)] = tally(known, unknown, lambda tr, r=rule, c=cut, g=lead * sd: (
                            tr.decide(r, c, g)))
                result["matched_stranger_rates"][f"{split}, {k} shots"] = matched
                for key, r in fixed.items():
                    print(f"{m:6} {split:4} {k} shots, fixed   {key:20} correct {r['correct']:3}/{r['tracks']} "
                          f"wrong {r['wrong_name']:2} strangers named {r['strangers_named']:4}/{r['stranger_tracks']}",
                          file=sys.stderr)
                for key, by_rate in matched.items():
                    cells = "  ".join(f"{rate}: {r['correct']:3}/{r['wrong_name']:2}" for rate, r in by_rate.items())
                    print(f"{m:6} {split:4} {k} shots, matched {key:20} correct/wrong at stranger rate {cells}",
                          file=sys.stderr)
        report["models"][m] = result
    print_report(report, args.json)


if __name__ == "__main__":
    main()
