"""The task heads and the founding papers' training mechanisms (PyTorch).

All heads read one shared layer ``h`` over the trunk's outputs; what the shared layer reads
is the *cross-task fusion* option (Li & Zhu): the identity embedding, the pooled trunk
feature, or both. Heads: gender (2 classes), age (a distribution over 0..100 years),
attributes (binary, :data:`engines.training.data.ATTRIBUTES`), expression (7 classes).

- :class:`TaskWeighting`: fixed weights; Yin & Liu's per-sample softmax weights computed
  from the shared feature (minimising the weighted loss moves weight to the *easier*
  task); the reverse direction (Ming et al.: the weight network ascends the weighted loss,
  so *harder* tasks weigh more); learned uncertainty weights (Kendall et al.: a noisy task's
  weight falls). A sample's weights cover only the tasks it has labels for.
- :class:`GatedAttributes`: Celona et al.'s gated multi-attribute head: a gate per
  attribute computed from ``h`` (``g_a = sigmoid(U_a h)``), a logit from ``g_a * h``, then a
  correlation layer over the attribute logits (initialised to the identity).
- :func:`masked_losses`: per-sample losses with a mask, so UTKFace, CelebA and FER2013
  train one network though each labels different tasks; an unlabelled task contributes
  exactly zero loss and zero gradient.
- :class:`GradientReversal`: identity forward, ``-scale * grad`` backward (MTLFace's
  adversarial age head; :mod:`engines.training.identity`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engines.training.data import ATTRIBUTES, EXPRESSIONS, MAX_AGE

TASKS = ("gender", "age", "attributes", "expression")
WEIGHTINGS = ("fixed", "dynamic", "reverse", "uncertainty")
INPUTS = ("embedding", "feature", "both")
ATTRIBUTE_HEADS = ("plain", "gated", "gated+correlation")
AGE_BINS = MAX_AGE + 1


@dataclass(frozen=True)
class HeadConfig:
    """Everything that defines a training run (written into the metrics JSON)."""

    inputs: str = "feature"
    weighting: str = "fixed"
    attribute_head: str = "gated+correlation"
    hidden: int = 256
    dropout: float = 0.5
    epochs: int = 20
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    age_sigma: float = 2.0
    """Width (years) of the Gaussian label distribution the age head is trained towards."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("inputs", INPUTS), ("weighting", WEIGHTINGS), ("attribute_head", ATTRIBUTE_HEADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("hidden", "epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or self.weight_decay < 0 or self.age_sigma <= 0:
            raise ValueError("dropout must be in [0, 1), lr and age_sigma positive, weight_decay >= 0")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient flips sign and is multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


class TaskWeighting(nn.Module):
    """Combines per-sample task losses into one loss (see the module's notes)."""

    def __init__(self, mode: str, shared_dim: int, tasks: int) -> None:
        super().__init__()
        if mode not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}")
        self.mode = mode
        self.tasks = tasks
        self.scorer = nn.Linear(shared_dim, tasks) if mode in ("dynamic", "reverse") else None
        if self.scorer is not None:
            nn.init.zeros_(self.scorer.weight)
            nn.init.zeros_(self.scorer.bias)
        self.log_var = nn.Parameter(torch.zeros(tasks)) if mode == "uncertainty" else None

    def sample_weights(self, shared: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, T) weights: a softmax over each sample's labelled tasks, times their number
        (so a sample's weights sum to its task count, as with fixed weights of 1)."""
        assert self.scorer is not None
        logits = self.scorer(shared.detach()).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
        return weights * mask.sum(dim=1, keepdim=True)

    def forward(self, losses: torch.Tensor, mask: torch.Tensor, shared: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, (T,) weight per task for logging) from (N, T) per-sample losses that
        are zero where ``mask`` is false."""
        counts = mask.sum(dim=0).clamp(min=1)
        present = mask.any(dim=0)
        if self.mode == "fixed":
            per_task = losses.sum(dim=0) / counts
            return per_task.sum(), present.float()
        if self.mode == "uncertainty":
            assert self.log_var is not None
            per_task = losses.sum(dim=0) / counts
            total = (torch.exp(-self.log_var) * per_task + self.log_var)[present].sum()
            return total, torch.exp(-self.log_var).detach()
        weights = self.sample_weights(shared, mask)
        detached = losses.detach()
        if self.mode == "dynamic":  # both the heads and the weight network descend sum(w * L)
            total = (weights * losses).sum(dim=0) / counts
        else:  # heads descend sum(w * L); the weight network ascends it
            total = (weights.detach() * losses - weights * detached + weights.detach() * detached).sum(dim=0) / counts
        logged = (weights.detach() * mask).sum(dim=0) / counts
        return total.sum(), logged


class GatedAttributes(nn.Module):
    """Per-attribute gates over the shared feature, then an optional correlation layer."""

    def __init__(self, shared_dim: int, count: int, correlation: bool) -> None:
        super().__init__()
        self.count, self.shared_dim = count, shared_dim
        self.gates = nn.Linear(shared_dim, count * shared_dim)
        self.weight = nn.Parameter(torch.randn(count, shared_dim) * shared_dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(count))
        self.correlation = nn.Linear(count, count) if correlation else None
        if self.correlation is not None:
            nn.init.eye_(self.correlation.weight)
            nn.init.zeros_(self.correlation.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.gates(h)).view(-1, self.count, self.shared_dim)
        logits = (gates * h.unsqueeze(1) * self.weight).sum(dim=2) + self.bias
        return self.correlation(logits) if self.correlation is not None else logits


class HeadNet(nn.Module):
    """Shared layer plus the four task heads over the trunk's outputs."""

    def __init__(self, config: HeadConfig, embedding_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embedding_dim, self.feature_dim = embedding_dim, feature_dim
        width = {"embedding": embedding_dim, "feature": feature_dim, "both": embedding_dim + feature_dim}[config.inputs]
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.shared = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Dropout(config.dropout))
        self.gender = nn.Linear(config.hidden, 2)
        self.age = nn.Linear(config.hidden, AGE_BINS)
        self.expression = nn.Linear(config.hidden, len(EXPRESSIONS))
        if config.attribute_head == "plain":
            self.attributes: nn.Module = nn.Linear(config.hidden, len(ATTRIBUTES))
        else:
            self.attributes = GatedAttributes(config.hidden, len(ATTRIBUTES), config.attribute_head.endswith("correlation"))
        self.weighting = TaskWeighting(config.weighting, config.hidden, len(TASKS))

    def select(self, trunk: torch.Tensor) -> torch.Tensor:
        """The part of ``[unit embedding, feature]`` the configured fusion reads, standardised."""
        e = self.embedding_dim
        x = {"embedding": trunk[:, :e], "feature": trunk[:, e:], "both": trunk}[self.config.inputs]
        return (x - self.mean) / self.std

    def forward(self, trunk: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.shared(self.select(trunk))
        return h, {"gender": self.gender(h), "age": self.age(h), "attributes": self.attributes(h),
                   "expression": self.expression(h)}


def age_targets(age: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian label distributions over 0..MAX_AGE years centred on each age."""
    bins = torch.arange(AGE_BINS, dtype=torch.float32)
    logits = -0.5 * ((bins[None, :] - age[:, None]) / sigma) ** 2
    return torch.softmax(logits, dim=1)


def masked_losses(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], age_sigma: float,
                  attribute_balance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) per-sample losses in :data:`TASKS` order, zero where a label is missing, and
    the (N, T) mask. Masked entries are replaced before the loss is computed, so no
    gradient reaches a head from a sample without its label. ``attribute_balance``
    (negatives / positives per attribute) weighs the rare positive class up, so the
    attribute heads aim at balanced accuracy."""
    gender, age = labels["gender"], labels["age"]
    attrs, expression = labels["attributes"], labels["expression"]
    mask = torch.stack([gender >= 0, ~torch.isnan(age), (attrs >= 0).any(dim=1), expression >= 0], dim=1)
    zero = torch.zeros(len(gender))
    l_gender = torch.where(mask[:, 0], F.cross_entropy(out["gender"], gender.clamp(min=0), reduction="none"), zero)
    safe_age = torch.where(mask[:, 1], age, torch.zeros_like(age))
    log_p = F.log_softmax(out["age"], dim=1)
    expected = (log_p.exp() * torch.arange(AGE_BINS, dtype=torch.float32)).sum(dim=1)
    kl = -(age_targets(safe_age, age_sigma) * log_p).sum(dim=1) + 0.1 * (expected - safe_age).abs()
    l_age = torch.where(mask[:, 1], kl, zero)
    a_mask = attrs >= 0
    bce = F.binary_cross_entropy_with_logits(out["attributes"], attrs.clamp(min=0).float(), reduction="none",
                                             pos_weight=attribute_balance)
    l_attrs = torch.where(a_mask, bce, torch.zeros_like(bce)).sum(dim=1) / a_mask.sum(dim=1).clamp(min=1)
    l_expr = torch.where(mask[:, 3], F.cross_entropy(out["expression"], expression.clamp(min=0), reduction="none"), zero)
    return torch.stack([l_gender, l_age, l_attrs, l_expr], dim=1), mask
