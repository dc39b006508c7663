"""The identity-side methods of the founding papers, on the recognizer's embedding.

- :class:`AgeInvariantSplit` (MTLFace, at embedding level): as MTLFace's attention splits a
  feature map into an age part and the residual identity part, the embedding ``e`` is split
  by a learned orthonormal age subspace ``U`` (k dimensions): age part ``a = U^T e``,
  identity part ``e - U U^T e``. The age part is trained to predict age; an adversarial
  age head reads the identity part through gradient reversal, which pushes whatever of
  age remains in the identity part into ``U``; an identity classifier (normalised softmax
  over the training people) and a term keeping the identity part's pairwise cosines close
  to the embedding's keep it an identity feature. Trained on CelebA identities plus UTKFace
  ages (masked per sample).
- :class:`CommonComponent` (MIR, Cheng et al.): a small network predicts the component all
  faces share, ``c = C(e)``; matching uses the "character" ``e - c``. The baseline it must
  beat is subtracting the training mean embedding
  (:func:`engines.multitask.centre.centre_embeddings`, what the shipped SFace space does).

Both are judged by verification on CelebA ``test`` pairs
(:func:`engines.training.identity.true_match_rate`); the issue's rule: ship only if it
does not get worse (split) or improves (common component).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.training.model import reverse_gradient

AGE_CENTRE, AGE_SCALE = 40.0, 20.0
"""Ages are regressed as (age - 40) / 20 by the age head and the adversary."""


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_scores(vectors: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every genuine and every impostor pair (unit vectors)."""
    v = unit(vectors.astype(np.float32))
    sims = v @ v.T
    upper = np.triu_indices(len(v), 1)
    same = (identity[:, None] == identity[None, :])[upper]
    scores = sims[upper]
    return scores[same], scores[~same]


def true_match_rate(genuine: np.ndarray, impostor: np.ndarray, fmr: float = 1e-3) -> tuple[float, float]:
    """(TMR, threshold) at the empirical impostor quantile for ``fmr``."""
    threshold = float(np.quantile(impostor, 1 - fmr))
    return float((genuine > threshold).mean()), threshold


@dataclass(frozen=True)
class IdentityConfig:
    age_dims: int = 8
    """Dimensions of the age subspace removed from the identity part."""
    adversary: float = 1.0
    """Gradient reversal scale of the adversarial age head (0: no adversary)."""
    keep: float = 0.1
    """Weight of keeping the identity part's pairwise cosines close to the embedding's."""
    epochs: int = 30
    lr: float = 3e-3
    seed: int = 0


class AgeInvariantSplit(nn.Module):
    def __init__(self, dim: int, identities: int, config: IdentityConfig) -> None:
        super().__init__()
        self.config = config
        self.basis = nn.Parameter(torch.randn(dim, config.age_dims) * dim**-0.5)
        self.age_head = nn.Sequential(nn.Linear(config.age_dims, 64), nn.ReLU(), nn.Linear(64, 1))
        self.adversary = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 1))
        self.classes = nn.Parameter(torch.randn(identities, dim) * 0.01)

    def subspace(self) -> torch.Tensor:
        """(dim, k) orthonormal basis of the age subspace."""
        q, _ = torch.linalg.qr(self.basis)
        return q

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(identity part, age coordinates)."""
        u = self.subspace()
        coords = e @ u
        return e - coords @ u.T, coords

    def losses(self, e: torch.Tensor, identity: torch.Tensor, age: torch.Tensor) -> dict[str, torch.Tensor]:
        ident, age_part = self(e)
        out: dict[str, torch.Tensor] = {}
        has_id, has_age = identity >= 0, ~torch.isnan(age)
        zero = torch.zeros(())
        if has_id.any():
            logits = 16.0 * F.normalize(ident[has_id]) @ F.normalize(self.classes).T
            out["identity"] = F.cross_entropy(logits, identity[has_id])
        else:
            out["identity"] = zero
        if has_age.any():
            target = (age[has_age] - AGE_CENTRE) / AGE_SCALE
            out["age"] = F.mse_loss(self.age_head(age_part[has_age]).squeeze(1), target)
            adv = self.adversary(reverse_gradient(ident[has_age], self.config.adversary))
            out["adversary"] = F.mse_loss(adv.squeeze(1), target)
        else:
            out["age"] = out["adversary"] = zero
        u, v = F.normalize(ident), F.normalize(e)
        out["keep"] = self.config.keep * ((u @ u.T - v @ v.T) ** 2).mean()
        return out


def train_split(embeddings: np.ndarray, identity: np.ndarray, age: np.ndarray, config: IdentityConfig,
                log: callable = lambda row: None) -> AgeInvariantSplit:
    """Train the split on unit embeddings with (masked) identity and age labels."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    ids = np.unique(identity[identity >= 0])
    remap = np.full(int(identity.max()) + 1 if len(ids) else 1, -1, np.int64)
    remap[ids] = np.arange(len(ids))
    labels = np.where(identity >= 0, remap[np.maximum(identity, 0)], -1)
    model = AgeInvariantSplit(embeddings.shape[1], len(ids), config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    x = torch.from_numpy(unit(embeddings).astype(np.float32))
    y, a = torch.from_numpy(labels), torch.from_numpy(age.astype(np.float32))
    for epoch in range(1, config.epochs + 1):
        totals: dict[str, float] = {}
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 256)):
            parts = model.losses(x[idx], y[idx], a[idx])
            loss = sum(parts.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
        log({"epoch": epoch, **{k: round(v, 4) for k, v in totals.items()}})
    model.eval()
    return model


class CommonComponent(nn.Module):
    """MIR: ``c = C(e)``; the character ``e - c`` is what is matched."""

    def __init__(self, dim: int, identities: int) -> None:
        super().__init__()
        self.common = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.face = nn.Linear(dim, 1)
        self.classes = nn.Parameter(torch.randn(identities, dim) * 0.01)

    def character(self, e: torch.Tensor) -> torch.Tensor:
        return e - self.common(e)

    def losses(self, e: torch.Tensor, identity: torch.Tensor, face_weight: float = 0.1) -> torch.Tensor:
        c = self.common(e)
        logits = 16.0 * F.normalize(e - c) @ F.normalize(self.classes).T
        face = F.binary_cross_entropy_with_logits(self.face(c).squeeze(1), torch.ones(len(e)))
        return F.cross_entropy(logits, identity) + face_weight * face


def train_common(embeddings: np.ndarray, identity: np.ndarray, *, epochs: int = 30, lr: float = 1e-3,
                 seed: int = 0) -> CommonComponent:
    """Train MIR's common network on unit embeddings of labelled people."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids, labels = np.unique(identity, return_inverse=True)
    model = CommonComponent(embeddings.shape[1], len(ids))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(unit(embeddings).astype(np.float32)), torch.from_numpy(labels.astype(np.int64))
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 256)):
            loss = model.losses(x[idx], y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return model


def common_mean(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The mean unit embedding over ``rows`` (a boolean mask of faces found): the common
    component :func:`engines.multitask.centre.centre_embeddings` removes."""
    if not rows.any():
        raise ValueError("no faces to average")
    return unit(embeddings[rows].astype(np.float64)).mean(axis=0).astype(np.float32)
