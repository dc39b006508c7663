"""The trained task heads: against the Cydral age and gender nets, and the ablations of the
founding papers' methods (README, "Task heads").

Needs a feature cache of ``../shared/data/face_train`` (``facestream train features --data
../shared/data/face_train --cache DIR``). Every run uses the same trunk, data and seed.
Figures carry 95% bootstrap intervals (1,000 resamples of the evaluated faces or pairs).

1. Trained heads (default options) against Cydral (dlib alignment, the two published nets,
   on the same largest MTCNN face): gender accuracy and age MAE on UTKFace ``val`` (per
   decade, per ethnicity group and gender), gender on CelebA ``test``.
2. Ablations on the validation splits: task weighting (fixed, dynamic, reverse,
   uncertainty), cross-task fusion (embedding, feature, both), attribute heads (plain,
   gated, gated+correlation), and the masked loss over the three datasets against each
   dataset's tasks trained alone.
3. Age-invariant identity (identity/age split with an adversarial age head): verification
   on CelebA ``test`` pairs (true-match rate at FMR 1e-3) and an age probe (ridge
   regression trained on UTKFace ``train``, MAE on ``val``) before and after.
4. Intra-representation: the raw embedding, mean-centred (on CelebA ``train``'s mean, and
   on the shipped centre: UTKFace and CelebA ``train``), and MIR's learned common
   component, by true-match rate at FMR 1e-3 on CelebA ``test`` (and ``val``) pairs; then
   the split of 3. on top of the shipped centred space.

Run by hand: ``python benchmarks/eval_heads.py --cache DIR [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data/face_train"


def _cydral_chunk(args: tuple[list[str], str]) -> dict[str, np.ndarray]:
    from engines import EngineRuntime, MTCNNDetector, RuntimeConfig, read_image_file
    from engines.config import Recognizer
    from engines.multitask.network import MultiTaskNet

    paths, root = args
    age = np.full(len(paths), np.nan, np.float32)
    male = np.full(len(paths), np.nan, np.float32)
    with EngineRuntime(RuntimeConfig(workers=1)) as runtime:
        detector = MTCNNDetector.create(runtime=runtime)
        net = MultiTaskNet.create(runtime=runtime, recognizer=Recognizer.DLIB, heads="cydral")
        for i, rel in enumerate(paths):
            image = read_image_file(Path(root) / rel)
            faces = detector.detect(image)
            if len(faces):
                out = net.analyze([image], [faces[int(np.argmax(faces.areas))]])[0]
                age[i], male[i] = out.ages[0], out.male_probs[0]
    return {"age": age, "male": male}


def cydral(data: Any, rows: np.ndarray, file: Path, processes: int) -> dict[str, np.ndarray]:
    """Cydral's age and P(male) for ``rows`` (cached in ``file``)."""
    keys = np.array([data.paths[i] for i in rows])
    if file.exists():
        with np.load(file, allow_pickle=False) as z:
            if np.array_equal(z["paths"], keys):
                return {"age": z["age"], "male": z["male"]}
    parts = [(list(keys[k::processes * 4]), str(data.root)) for k in range(processes * 4)]
    age, male = np.empty(len(keys), np.float32), np.empty(len(keys), np.float32)
    started = time.monotonic()
    with ProcessPoolExecutor(processes) as pool:
        for k, out in enumerate(pool.map(_cydral_chunk, parts)):
            age[k :: processes * 4], male[k :: processes * 4] = out["age"], out["male"]
            print(f"  cydral: {k + 1}/{len(parts)} chunks ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    np.savez(file, paths=keys, age=age, male=male)
    return {"age": age, "male": male}


def ci(values: np.ndarray, stat=np.mean, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    from engines.training.train import bootstrap

    lo, hi = bootstrap(lambda i: float(stat(values[i])), len(values), rounds=rounds, seed=seed)
    return {"value": round(float(stat(values)), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def fmt(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def versus_cydral(data, cache, model, processes: int, cydral_file: Path) -> dict[str, Any]:
    from engines.multitask.heads import decode_age_years as age_summary
    from engines.training.data import SETS
    from engines.training.train import DECADES, predict, split_rows, trunk_inputs

    trunk = trunk_inputs(cache)
    out: dict[str, Any] = {}
    utk = split_rows(data, cache, "val", source=SETS.index("utkface"))
    ref = cydral(data, utk, cydral_file, processes)
    pred = predict(model, trunk[utk])
    truth_age, truth_g = data.age[utk], data.gender[utk]
    ok = ~np.isnan(ref["age"])  # both found a face (the heads' rows are the found ones)
    ours_age = np.abs(age_summary(pred["age"])[0] - truth_age)
    ours_g = ((pred["gender"] >= 0.5) == truth_g).astype(float)
    cyd_age = np.abs(ref["age"] - truth_age)
    cyd_g = ((ref["male"] >= 0.5) == truth_g).astype(float)
    out["utkface_val"] = {
        "faces": int(ok.sum()),
        "gender_accuracy": {"heads": ci(ours_g[ok]), "cydral": ci(cyd_g[ok])},
        "age_mae": {"heads": ci(ours_age[ok]), "cydral": ci(cyd_age[ok])},
        "age_mae_by_decade": {f"{lo}-{hi}": {"faces": int(m.sum()), "heads": round(float(ours_age[m].mean()), 2),
                                             "cydral": round(float(cyd_age[m].mean()), 2)}
                              for lo, hi in DECADES if (m := ok & (truth_age >= lo) & (truth_age < hi + 1)).any()},
        "by_group": {f"{data.groups[k]}/{name}": {
            "faces": int(m.sum()),
            "gender_accuracy": {"heads": round(float(ours_g[m].mean()), 3), "cydral": round(float(cyd_g[m].mean()), 3)},
            "age_mae": {"heads": round(float(ours_age[m].mean()), 2), "cydral": round(float(cyd_age[m].mean()), 2)}}
            for k in range(len(data.groups)) for v, name in enumerate(("female", "male"))
            if (m := ok & (data.group[utk] == k) & (truth_g == v)).any()},
    }
    celeba = split_rows(data, cache, "test", source=SETS.index("celeba"))
    ref = cydral(data, celeba, cydral_file.with_name(cydral_file.stem + "-celeba-test.npz"), processes)
    pred = predict(model, trunk[celeba])
    ok = ~np.isnan(ref["male"])
    truth_g = data.gender[celeba]
    out["celeba_test"] = {"faces": int(ok.sum()), "gender_accuracy": {
        "heads": ci(((pred["gender"] >= 0.5) == truth_g)[ok].astype(float)),
        "cydral": ci(((ref["male"] >= 0.5) == truth_g)[ok].astype(float))}}
    return out


def val_figures(data, cache, model) -> dict[str, Any]:
    """The validation figures each ablation is judged by, with intervals."""
    from engines.multitask.heads import decode_age_years as age_summary
    from engines.training.data import ATTRIBUTES, SETS
    from engines.training.train import balanced_accuracy, predict, split_rows, trunk_inputs

    trunk = trunk_inputs(cache)
    utk = split_rows(data, cache, "val", source=SETS.index("utkface"))
    pred = predict(model, trunk[utk])
    fig = {"utk_gender": ci(((pred["gender"] >= 0.5) == data.gender[utk]).astype(float)),
           "utk_age_mae": ci(np.abs(age_summary(pred["age"])[0] - data.age[utk]))}
    cel = split_rows(data, cache, "val", source=SETS.index("celeba"))
    pred = predict(model, trunk[cel])
    truth, guess = data.attributes[cel], (pred["attributes"] >= 0.5).astype(int)
    mean_bacc = lambda idx: float(np.mean([balanced_accuracy(truth[idx, k], guess[idx, k])  # noqa: E731
                                           for k in range(len(ATTRIBUTES))]))
    rng = np.random.default_rng(0)
    boot = [mean_bacc(rng.integers(0, len(cel), len(cel))) for _ in range(300)]
    fig["celeba_attr_mean_bacc"] = {"value": round(mean_bacc(np.arange(len(cel))), 4),
                                    "ci95": [round(float(v), 4) for v in np.percentile(boot, [2.5, 97.5])]}
    fer = split_rows(data, cache, "val", source=SETS.index("fer2013"))
    pred = predict(model, trunk[fer])
    fig["fer_expression"] = ci((pred["expression"].argmax(1) == data.expression[fer]).astype(float))
    return fig


def ablations(data, cache) -> dict[str, Any]:
    from engines.training.model import ATTRIBUTE_HEADS, INPUTS, WEIGHTINGS, HeadConfig
    from engines.training.train import train_heads

    runs: dict[str, Any] = {}
    for option, values in (("weighting", WEIGHTINGS), ("inputs", INPUTS), ("attribute_head", ATTRIBUTE_HEADS)):
        for value in values:
            key = f"{option}={value}"
            config = HeadConfig(**{option: value})
            if config == HeadConfig() and "default" in runs:
                runs[key] = runs["default"]
                continue
            started = time.monotonic()
            result = train_heads(data, cache, config)
            runs[key] = {"figures": val_figures(data, cache, result.model), "best_epoch": result.best_epoch,
                         "final_task_weights": result.history[result.best_epoch - 1]["task_weights"]}
            if config == HeadConfig():
                runs["default"] = runs[key]
            print(f"  {key}: {time.monotonic() - started:.0f} s {json.dumps(runs[key]['figures'])}", file=sys.stderr)
    runs.pop("default", None)
    return runs


def single_dataset(data, cache) -> dict[str, Any]:
    """The masked multi-dataset loss against training each dataset's tasks alone: the
    default heads trained on one dataset's ``train`` rows only."""
    from engines.training.data import SETS
    from engines.training.model import HeadConfig
    from engines.training.train import split_rows, train_heads

    runs: dict[str, Any] = {}
    for name in ("utkface", "celeba", "fer2013"):
        rows = split_rows(data, cache, "train", source=SETS.index(name))
        val = split_rows(data, cache, "val", source=SETS.index(name))
        result = train_heads(data, cache, HeadConfig(), train_rows=rows, val_rows=val)
        runs[f"{name} only"] = {"figures": val_figures(data, cache, result.model), "best_epoch": result.best_epoch}
        print(f"  {name} only: {json.dumps(runs[f'{name} only']['figures'])}", file=sys.stderr)
    return runs


def identity_methods(data, cache) -> dict[str, Any]:
    import torch

    from engines.multitask.centre import centre_embeddings as centre
    from engines.multitask.centre import shipped_centre
    from engines.multitask.recognizers import SFACE_CENTRE_SHA256
    from engines.training.data import SETS, SPLITS
    from engines.training.identity import (
        IdentityConfig,
        pair_scores,
        train_common,
        train_split,
        true_match_rate,
        unit,
    )

    emb = unit(np.nan_to_num(cache.embedding.astype(np.float32)))
    found = cache.found
    celeba, utk = data.source == SETS.index("celeba"), data.source == SETS.index("utkface")
    split = lambda name: data.split == SPLITS.index(name)  # noqa: E731

    def tmr(vectors: np.ndarray, on: str = "test") -> dict[str, Any]:
        rows = found & celeba & split(on)
        genuine, impostor = pair_scores(vectors[rows], data.identity[rows])
        rate, threshold = true_match_rate(genuine, impostor, 1e-3)
        boot = ci((genuine > threshold).astype(float))
        return {**boot, "value": round(rate, 4), "threshold": round(threshold, 4), "genuine_pairs": len(genuine)}

    def age_probe(vectors: np.ndarray) -> dict[str, Any]:
        train, val = found & utk & split("train"), found & utk & split("val")
        x = np.c_[vectors[train], np.ones(train.sum())]
        coef = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ data.age[train])
        err = np.abs(np.c_[vectors[val], np.ones(val.sum())] @ coef - data.age[val])
        return ci(err)

    out: dict[str, Any] = {"raw": {"tmr_fmr_1e-3": tmr(emb), "age_probe_mae": age_probe(emb)}}
    train = found & split("train") & (celeba | utk)
    ident_labels = np.where(celeba, data.identity, -1)[train]
    ages = np.where(utk, data.age, np.nan)[train]
    for adversary in (0.0, 1.0):
        model = train_split(emb[train], ident_labels, ages, IdentityConfig(adversary=adversary))
        with torch.no_grad():
            ident, _ = model(torch.from_numpy(emb))
        ident = ident.numpy()
        out[f"split adversary={adversary}"] = {"tmr_fmr_1e-3": tmr(ident), "age_probe_mae": age_probe(ident)}
    people = found & celeba & split("train")
    out["mean-centred, CelebA train mean"] = {"tmr_fmr_1e-3": tmr(centre(emb, emb[people].mean(0)))}
    centred = centre(emb, shipped_centre(SFACE_CENTRE_SHA256))
    out["mean-centred (shipped: UTKFace + CelebA train mean)"] = {
        "tmr_fmr_1e-3": tmr(centred), "tmr_val": tmr(centred, "val"), "raw_tmr_val": tmr(emb, "val"),
        "age_probe_mae": age_probe(centred)}
    for adversary in (0.0, 1.0):  # method 4 on top of the shipped space
        model = train_split(centred[train], ident_labels, ages, IdentityConfig(adversary=adversary))
        with torch.no_grad():
            ident = model(torch.from_numpy(centred))[0].numpy()
        out[f"centred, then split adversary={adversary}"] = {"tmr_fmr_1e-3": tmr(ident), "tmr_val": tmr(ident, "val"),
                                                             "age_probe_mae": age_probe(ident)}
    common = train_common(emb[people], data.identity[people])
    with torch.no_grad():
        character = common.character(torch.from_numpy(emb)).numpy()
    out["MIR common network"] = {"tmr_fmr_1e-3": tmr(character)}
    return out


def main() -> None:
    from engines.training.data import load
    from engines.training.features import read
    from engines.training.model import HeadConfig
    from engines.training.train import train_heads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--cydral-cache", type=Path, default=Path("/tmp/cydral-utk-val.npz"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--parts", default="cydral,ablations,single,identity")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load(DATA)
    cache = read(data, args.cache)
    report: dict[str, Any] = {}
    parts = set(args.parts.split(","))
    if "cydral" in parts:
        model = train_heads(data, cache, HeadConfig()).model
        report["versus_cydral"] = versus_cydral(data, cache, model, args.processes, args.cydral_cache)
    if "ablations" in parts:
        report["ablations"] = ablations(data, cache)
    if "single" in parts:
        report["single_dataset"] = single_dataset(data, cache)
    if "identity" in parts:
        report["identity"] = identity_methods(data, cache)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
