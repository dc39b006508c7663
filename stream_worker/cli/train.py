"""``facestream train features|heads|centre``: retrain the task heads and the identity centre.

``features`` runs the recognizer's trunk once over a labelled set (MTCNN, alignment,
SFace: the path the worker runs) into a resumable cache; ``heads`` trains the heads from
it in minutes, evaluates them and writes a heads folder the worker loads with
``models.heads``; ``centre`` writes the mean identity embedding the SFace space subtracts
(``engines/multitask/centre.py``). Needs PyTorch (``pip install 'facestream[convert]'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from stream_worker.cli.options import add_config_options, bounded, model_store
from stream_worker.config import FaceStreamConfig

log = logging.getLogger(__name__)

DEFAULT_SETS = "utkface,celeba,fer2013"


def _sets(text: str) -> tuple[str, ...]:
    from engines.training.data import SETS

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sets must be among {', '.join(SETS)}, got {text!r}")
    return names


def add_parsers(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="retrain the task heads (gender, age, attributes, expression) on labelled faces",
        description="Two steps: `features` caches the trunk's outputs for a labelled set, `heads` trains the heads "
        "from that cache. A labelled set is a folder with labels_utkface.csv, labels_celeba.csv and/or "
        "labels_fer2013.csv (README, 'Task heads', gives the columns). Needs PyTorch.")
    actions = train.add_subparsers(dest="train_command", required=True, metavar="STEP")
    features = actions.add_parser(
        "features", help="run the trunk once over a labelled set into a feature cache (resumable)",
        description="MTCNN, ArcFace alignment and the recognizer's trunk over every image of the set, largest face "
        "per image, written to CACHE in shards of 500 images; an interrupted run resumes. About 20-40 ms per image "
        "per process on a modern CPU core.")
    features.add_argument("--data", type=Path, required=True, metavar="DIR", help="the labelled set's folder")
    features.add_argument("--cache", type=Path, required=True, metavar="DIR", help="where the features go")
    features.add_argument("--sets", type=_sets, default=_sets(DEFAULT_SETS), help=f"default {DEFAULT_SETS}")
    features.add_argument("--processes", type=bounded(int, 1, 256, "--processes"), default=2)
    add_config_options(features)
    features.set_defaults(handler=run_features)

    heads = actions.add_parser(
        "heads", help="train, evaluate and write the task heads from a feature cache",
        description="Trains on `train`, chooses the epoch on `val`, reports on `test` (UTKFace: `val`). Seeded: the "
        "same cache and options give the same weights. Writes OUT/heads.onnx, OUT/heads.json (sha256, trunk, what is "
        "shipped) and OUT/metrics.json (options, per-epoch losses and task weights, figures with 95%% bootstrap "
        "intervals, the label files' SHA-256 and licences).")
    heads.add_argument("--data", type=Path, required=True, metavar="DIR")
    heads.add_argument("--cache", type=Path, required=True, metavar="DIR")
    heads.add_argument("--out", type=Path, required=True, metavar="DIR")
    heads.add_argument("--sets", type=_sets, default=_sets(DEFAULT_SETS))
    heads.add_argument("--inputs", choices=("embedding", "feature", "both"), default="feature",
                       help="cross-task fusion: what the heads read (default feature)")
    heads.add_argument("--weighting", choices=("fixed", "dynamic", "reverse", "uncertainty"), default="fixed",
                       help="task loss weighting (default fixed; README, 'Task heads', has the ablation)")
    heads.add_argument("--attribute-head", choices=("plain", "gated", "gated+correlation"), default="gated+correlation")
    heads.add_argument("--epochs", type=bounded(int, 1, 1000, "--epochs"), default=20)
    heads.add_argument("--hidden", type=bounded(int, 8, 4096, "--hidden"), default=256)
    heads.add_argument("--seed", type=int, default=0)
    heads.add_argument("--attribute-target", type=bounded(float, 0.0, 1.0, "--attribute-target"), default=0.85,
                       help="ship an attribute only if its balanced accuracy on test reaches this (default 0.85)")
    heads.add_argument("--expression-target", type=bounded(float, 0.0, 1.0, "--expression-target"), default=0.55,
                       help="ship expression only if its test accuracy reaches this (default 0.55)")
    add_config_options(heads)
    heads.set_defaults(handler=run_heads)

    centre = actions.add_parser(
        "centre", help="write the identity embedding's common component (the mean unit embedding) from a cache",
        description="The mean unit embedding of the faces found in the `train` split of --average, as JSON: the file "
        "FaceStream ships as engines/multitask/weights/sface-centre.json. A new centre is a new embedding space: "
        "its sha256 goes into the space id, and the score statistics and thresholds must be measured again "
        "(benchmarks/eval_recognizers.py).")
    centre.add_argument("--data", type=Path, required=True, metavar="DIR")
    centre.add_argument("--cache", type=Path, required=True, metavar="DIR")
    centre.add_argument("--out", type=Path, required=True, metavar="FILE")
    centre.add_argument("--sets", type=_sets, default=_sets(DEFAULT_SETS),
                        help=f"the sets the cache was made from (default {DEFAULT_SETS})")
    centre.add_argument("--average", type=_sets, default=_sets("utkface,celeba"),
                        help="the sets whose train faces are averaged (default utkface,celeba: faces of every age "
                        "and of five ethnicity groups; FER2013's grey 48-pixel crops are not like a camera's faces)")
    add_config_options(centre)
    centre.set_defaults(handler=run_centre)


def _load(args: argparse.Namespace):
    from engines.training.data import load

    return load(args.data, args.sets)


def run_features(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from tqdm import tqdm

    from engines.training.features import extract

    data = _load(args)
    store = model_store(config)
    with tqdm(total=len(data), unit="img", desc="trunk features", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        cache = extract(data, args.cache, processes=args.processes, store_home=store.home, progress=progress)
    found = int(cache.found.sum())
    unreadable = int(cache.unreadable.sum()) if cache.unreadable is not None else 0
    print(json.dumps({"images": len(data), "faces_found": found, "unreadable": unreadable, "cache": str(args.cache),
                      "trunk": cache.trunk}))
    return 0


def licences(data_dir: Path) -> list[dict[str, str]]:
    """The sources table of the set's SOURCES.md (dataset, repository, commit, licence), if present."""
    file = data_dir / "SOURCES.md"
    rows = []
    if file.exists():
        for line in file.read_text().splitlines():
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0] not in ("dataset", "---") and not cells[0].startswith("-"):
                rows.append(dict(zip(("dataset", "repository", "commit", "licence"), cells)))
    return rows


def run_heads(args: argparse.Namespace, config: FaceStreamConfig) -> int:

    from engines.training.data import ATTRIBUTES
    from engines.training.export import export
    from engines.training.features import read
    from engines.training.model import HeadConfig
    from engines.training.train import evaluate_by_set, train_heads

    data = _load(args)
    cache = read(data, args.cache)
    try:
        head_config = HeadConfig(inputs=args.inputs, weighting=args.weighting, attribute_head=args.attribute_head,
                                 epochs=args.epochs, hidden=args.hidden, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def on_epoch(row: dict[str, Any]) -> None:
        losses = " ".join(f"{k}={v:.3f}" for k, v in row["loss"].items())
        weights = " ".join(f"{k}={v:.2f}" for k, v in row["task_weights"].items())
        print(f"epoch {row['epoch']}/{head_config.epochs}: val score {row['val_score']:.4f}; loss {losses}; "
              f"weights {weights} ({row['seconds']} s)", file=sys.stderr, flush=True)

    try:
        result = train_heads(data, cache, head_config, on_epoch=on_epoch)
    except ValueError as exc:  # e.g. a set without `val` rows
        raise ConfigError(f"cannot train on {args.data}: {exc}") from None
    report: dict[str, Any] = {"config": head_config.to_dict(), "best_epoch": result.best_epoch,
                              "history": result.history, "trunk": cache.trunk,
                              "faces": {"images": len(data), "found": int(cache.found.sum())}}
    for split in ("val", "test"):
        report[split] = evaluate_by_set(data, cache, result.model, split, intervals=True)
    test_attrs = report["test"].get("celeba", {}).get("attributes_balanced_accuracy", {})
    shipped = tuple(a for a in ATTRIBUTES if test_attrs.get(a, {}).get("value", 0.0) >= args.attribute_target)
    expression = report["test"].get("fer2013", {}).get("expression_accuracy", {}).get("value", 0.0)
    report["shipped"] = {"attributes": list(shipped), "attribute_target": args.attribute_target,
                         "expression": bool(expression >= args.expression_target),
                         "expression_target": args.expression_target}
    report["training_data"] = {"folder": str(args.data), "labels_sha256": data.digest(), "sets": list(args.sets),
                               "licences": licences(args.data)}
    export(result.model, args.out, trunk=cache.trunk, shipped_attributes=shipped,
           expression_shipped=report["shipped"]["expression"], metrics=report)
    summary = {"out": str(args.out), "best_epoch": result.best_epoch, "shipped": report["shipped"]}
    for split in ("val", "test"):
        summary[split] = {f"{name}.{k}": v["value"] for name, figures in report[split].items()
                          for k, v in figures.items() if isinstance(v, dict) and "value" in v}
    print(json.dumps(summary, indent=2, default=float))
    return 0


def run_centre(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    import numpy as np

    from engines.multitask.centre import IdentityCentre
    from engines.training.data import SETS, SPLITS
    from engines.training.features import read
    from engines.training.identity import common_mean

    data = _load(args)
    cache = read(data, args.cache)
    averaged = np.isin(data.source, [SETS.index(s) for s in args.average])
    rows = cache.found & averaged & (data.split == SPLITS.index("train"))
    if not rows.any():
        raise ConfigError(f"{args.data}: no face found in the train split of {', '.join(args.average)}")
    mean = common_mean(np.nan_to_num(cache.embedding), rows)
    centre = IdentityCentre(cache.trunk, tuple(float(v) for v in mean), int(rows.sum()), tuple(args.average),
                            "train", data.digest())
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(centre.to_json())
    except OSError as exc:
        raise ConfigError(f"cannot write the centre to {args.out}: {exc.strerror or exc}") from None
    print(json.dumps({"out": str(args.out), "faces": centre.faces, "trunk": centre.trunk,
                      "norm": round(float(np.linalg.norm(mean)), 4)}))
    return 0
