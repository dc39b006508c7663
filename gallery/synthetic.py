"""Synthetic galleries that look like real face embeddings, for tests and benchmarks.

Uniform random unit vectors have no structure and flatter or mislead any approximate
index. Instead, identity centres are drawn from a Gaussian fitted to real L2-normalised
embeddings (mean plus shrunk covariance), then normalised; each template and probe is a
noisy sample around its centre, with the noise scaled so that two samples of one identity
have the cosine similarity measured on real same-person pairs (0.966 on the shared
``pairs.csv``, with dlib's embedding: the generator models dlib's space; fitted to another
recognizer's embeddings it keeps dlib's same-person spread, which is fine for timing and
index checks, not for accuracy figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENUINE_COSINE = 0.966
"""Mean cosine similarity of same-person pairs of ``pairs.csv`` (benchmarks/eval_verification.py)."""


@dataclass(frozen=True)
class EmbeddingDistribution:
    mean: np.ndarray
    factor: np.ndarray
    """(d, d) with covariance = factor @ factor.T."""

    @classmethod
    def fit(cls, embeddings: np.ndarray, shrink: float = 0.1) -> EmbeddingDistribution:
        """Fit to real embeddings (n, d); covariance shrunk towards its average variance so it
        has full rank even from fewer samples than dimensions."""
        x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        cov = np.cov(x, rowvar=False)
        d = cov.shape[0]
        cov = (1 - shrink) * cov + shrink * (np.trace(cov) / d) * np.eye(d)
        return cls(x.mean(axis=0), np.linalg.cholesky(cov))

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((n, len(self.mean)))
        c = self.mean + z @ self.factor.T
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def noise_for_cosine(dim: int, cosine: float) -> float:
    """Per-coordinate noise sigma such that two noisy unit samples of one unit centre have
    the given expected cosine: each sample is c + e, |e|^2 ~ dim sigma^2, so the cosine is
    about 1 / (1 + dim sigma^2)."""
    return float(np.sqrt((1 / cosine - 1) / dim))


def samples(centres: np.ndarray, per_centre: int, rng: np.random.Generator, cosine: float = GENUINE_COSINE) -> tuple[np.ndarray, np.ndarray]:
    """``per_centre`` noisy unit samples of each centre: (vectors, index of their centre)."""
    owner = np.repeat(np.arange(len(centres)), per_centre)
    sigma = noise_for_cosine(centres.shape[1], cosine)
    x = centres[owner] + sigma * rng.standard_normal((len(owner), centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), owner
