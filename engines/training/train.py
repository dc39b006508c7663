"""Seeded training of the task heads from a feature cache, evaluation and export
(``facestream train heads``).

Train on ``train``, choose the epoch on ``val`` (the mean of gender accuracy, 1 - age MAE /
10 years, mean attribute balanced accuracy and expression accuracy), report on ``test``
(UTKFace has no ``test``: its ``val`` is reported). Every epoch logs the loss per task, the
task weights and the validation score.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engines.multitask.heads import decode_age_years
from engines.training.data import ATTRIBUTES, EXPRESSIONS, SETS, SPLITS, LabelledSet
from engines.training.features import FeatureCache
from engines.training.model import TASKS, HeadConfig, HeadNet, masked_losses

log = logging.getLogger(__name__)

DECADES = tuple((lo, lo + 9) for lo in range(0, 100, 10))


def trunk_inputs(cache: FeatureCache) -> np.ndarray:
    """``[unit embedding, feature]`` per image (:attr:`FeatureCache.trunk_inputs`, computed once)."""
    return cache.trunk_inputs


def _labels(data: LabelledSet, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {"gender": torch.from_numpy(data.gender[rows].astype(np.int64)),
            "age": torch.from_numpy(data.age[rows].astype(np.float32)),
            "attributes": torch.from_numpy(data.attributes[rows].astype(np.int64)),
            "expression": torch.from_numpy(data.expression[rows].astype(np.int64))}


def split_rows(data: LabelledSet, cache: FeatureCache, split: str, *, source: int | None = None) -> np.ndarray:
    """Rows of ``split`` (optionally of one dataset) whose face was found."""
    ok = cache.found & (data.split == SPLITS.index(split))
    if source is not None:
        ok &= data.source == source
    return np.flatnonzero(ok)


@torch.no_grad()
def predict(model: HeadNet, trunk: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities per task: P(male), age distribution, P(attribute), expression."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {t: [] for t in TASKS}
    for start in range(0, len(trunk), 4096):
        _, raw = model(torch.from_numpy(trunk[start : start + 4096]))
        out["gender"].append(torch.softmax(raw["gender"], 1)[:, 1].numpy())
        out["age"].append(torch.softmax(raw["age"], 1).numpy())
        out["attributes"].append(torch.sigmoid(raw["attributes"]).numpy())
        out["expression"].append(torch.softmax(raw["expression"], 1).numpy())
    return {t: np.concatenate(v) if v else np.empty(0) for t, v in out.items()}


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    pos, neg = truth == 1, truth == 0
    if not pos.any() or not neg.any():
        return float("nan")
    return float(((predicted[pos] == 1).mean() + (predicted[neg] == 0).mean()) / 2)


def bootstrap(stat: Callable[[np.ndarray], float], n: int, *, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``stat(indices)`` over resamples of ``n`` items."""
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(rounds)], np.float64)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate(data: LabelledSet, rows: np.ndarray, pred: dict[str, np.ndarray], *, intervals: bool = False
             ) -> dict[str, object]:
    """Accuracy figures for the labelled tasks among ``rows`` (``pred`` row-aligned with them)."""
    out: dict[str, object] = {"faces": int(len(rows))}

    def ci(stat: Callable[[np.ndarray], float], n: int) -> dict[str, object]:
        value = stat(np.arange(n))
        return {"value": value, "ci95": bootstrap(stat, n)} if intervals else {"value": value}

    g = data.gender[rows]
    has = g >= 0
    if has.any():
        right = ((pred["gender"][has] >= 0.5).astype(int) == g[has]).astype(float)
        out["gender_accuracy"] = ci(lambda i: float(right[i].mean()), len(right))
    age = data.age[rows]
    has = ~np.isnan(age)
    if has.any():
        err = np.abs(decode_age_years(pred["age"][has])[0] - age[has])
        out["age_mae"] = ci(lambda i: float(err[i].mean()), len(err))
        out["age_mae_by_decade"] = {f"{lo}-{hi}": {"faces": int(m.sum()), "mae": float(err[m].mean())}
                                    for lo, hi in DECADES if (m := (age[has] >= lo) & (age[has] <= hi + 0.99)).any()}
        group = data.group[rows][has]
        gender = g[has]
        right = ((pred["gender"][has] >= 0.5).astype(int) == gender)
        out["by_group"] = {
            f"{data.groups[k]}/{name}": {"faces": int(m.sum()), "gender_accuracy": float(right[m].mean()),
                                         "age_mae": float(err[m].mean())}
            for k in range(len(data.groups)) for v, name in enumerate(("female", "male"))
            if (m := (group == k) & (gender == v)).any()
        }
    attrs = data.attributes[rows]
    if (attrs >= 0).any():
        table = {}
        for k, name in enumerate(ATTRIBUTES):
            m = attrs[:, k] >= 0
            truth, guess = attrs[m, k], (pred["attributes"][m, k] >= 0.5).astype(int)
            table[name] = {**ci(lambda i: balanced_accuracy(truth[i], guess[i]), len(truth)),
                           "positives": int((truth == 1).sum()), "faces": int(m.sum())}
        out["attributes_balanced_accuracy"] = table
    expr = data.expression[rows]
    has = expr >= 0
    if has.any():
        right = (pred["expression"][has].argmax(1) == expr[has]).astype(float)
        out["expression_accuracy"] = ci(lambda i: float(right[i].mean()), len(right))
        out["expression_classes"] = list(EXPRESSIONS)
    return out


def evaluate_by_set(data: LabelledSet, cache: FeatureCache, model: HeadNet, split: str, *,
                    intervals: bool = False) -> dict[str, dict[str, object]]:
    """:func:`evaluate` per dataset (UTKFace, CelebA, FER2013) on ``split``'s found faces,
    with how many of the split's images had no face found."""
    trunk = trunk_inputs(cache)
    out = {}
    for source, name in enumerate(SETS):
        rows = split_rows(data, cache, split, source=source)
        images = int(((data.split == SPLITS.index(split)) & (data.source == source)).sum())
        if len(rows):
            out[name] = {"images": images, **evaluate(data, rows, predict(model, trunk[rows]), intervals=intervals)}
    return out


def selection_score(metrics: dict[str, object]) -> float:
    """The validation score epochs are chosen by (higher is better)."""
    parts = []
    if "gender_accuracy" in metrics:
        parts.append(metrics["gender_accuracy"]["value"])  # type: ignore[index]
    if "age_mae" in metrics:
        parts.append(1 - metrics["age_mae"]["value"] / 10)  # type: ignore[index]
    if "attributes_balanced_accuracy" in metrics:
        parts.append(float(np.nanmean([v["value"] for v in metrics["attributes_balanced_accuracy"].values()])))  # type: ignore[union-attr]
    if "expression_accuracy" in metrics:
        parts.append(metrics["expression_accuracy"]["value"])  # type: ignore[index]
    return float(np.mean(parts)) if parts else float("nan")


@dataclass
class TrainResult:
    model: HeadNet
    best_epoch: int
    history: list[dict[str, object]] = field(default_factory=list)
    val: dict[str, object] = field(default_factory=dict)


def train_heads(data: LabelledSet, cache: FeatureCache, config: HeadConfig, *,
                train_rows: np.ndarray | None = None, val_rows: np.ndarray | None = None,
                on_epoch: Callable[[dict[str, object]], None] | None = None) -> TrainResult:
    """Train the heads (seeded: the same inputs and config give the same weights)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    trunk = trunk_inputs(cache)
    train_rows = split_rows(data, cache, "train") if train_rows is None else train_rows
    val_rows = split_rows(data, cache, "val") if val_rows is None else val_rows
    if not len(train_rows) or not len(val_rows):
        raise ValueError("no training or validation faces (were faces found in the images?)")
    model = HeadNet(config, cache.embedding.shape[1], cache.feature.shape[1])
    x_train = torch.from_numpy(trunk[train_rows])
    selected = model.select(x_train)
    model.mean.copy_(selected.mean(0))
    model.std.copy_(selected.std(0).clamp(min=1e-3))
    labels = _labels(data, train_rows)
    attrs = data.attributes[train_rows]
    balance = torch.tensor([((attrs[:, k] == 0).sum() / max(1, (attrs[:, k] == 1).sum())) for k in range(len(ATTRIBUTES))],
                           dtype=torch.float32).clamp(max=30)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_rows) / config.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    best: tuple[float, int, dict] = (-math.inf, 0, {})
    history: list[dict[str, object]] = []
    x_val = trunk[val_rows]
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        model.train()
        order = torch.from_numpy(rng.permutation(len(train_rows)))
        sums, weights, batches = torch.zeros(len(TASKS)), torch.zeros(len(TASKS)), 0
        for start in range(0, len(order), config.batch):
            idx = order[start : start + config.batch]
            h, out = model(x_train[idx])
            losses, mask = masked_losses(out, {k: v[idx] for k, v in labels.items()}, config.age_sigma, balance)
            total, w = model.weighting(losses, mask, h)
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            schedule.step()
            sums += losses.detach().sum(0) / mask.sum(0).clamp(min=1)
            weights += w
            batches += 1
        val = evaluate(data, val_rows, predict(model, x_val))
        score = selection_score(val)
        row = {"epoch": epoch, "seconds": round(time.monotonic() - started, 2), "val_score": round(score, 4),
               "loss": {t: round(float(v) / batches, 4) for t, v in zip(TASKS, sums)},
               "task_weights": {t: round(float(v) / batches, 4) for t, v in zip(TASKS, weights)}}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model, best[1], history, evaluate(data, val_rows, predict(model, x_val)))
