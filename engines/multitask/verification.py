"""One-to-one face verification with the identity embeddings.

Scores are cosine similarities of L2-normalised embeddings (1: identical direction). Each
recognizer has its own threshold (:attr:`RecognizerProfile.verify_threshold`, false-match
rate 1e-3 on CelebA ``test``). For dlib's descriptors, the raw Euclidean distance d and
the cosine c are related by d^2 = n1^2 + n2^2 - 2 n1 n2 c, with norms n ~ 1.37-1.53 on the
shared photos; dlib's documented rule "same person below d = 0.6" corresponds to c of
about 0.90-0.91 there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.config import DEFAULT_RECOGNIZER
from engines.multitask.recognizers import profile

DEFAULT_SIMILARITY_THRESHOLD = profile(DEFAULT_RECOGNIZER).verify_threshold
"""Cosine similarity at or above which two faces of the default recognizer are called the
same person (README, "Recognizers")."""


def fit_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The similarity threshold with the highest accuracy on labelled scores.

    Among equally accurate thresholds, the midpoint of the widest contiguous interval.
    """
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = np.array([np.mean((scores >= t) == same) for t in candidates])
    best = np.flatnonzero(accuracy == accuracy.max())
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widest = max(runs, key=lambda run: candidates[run[-1]] - candidates[run[0]])
    return float((candidates[widest[0]] + candidates[widest[-1]]) / 2)


@dataclass(frozen=True)
class Verification:
    """The comparison of two faces."""

    similarity: float
    """Cosine similarity of the L2-normalised embeddings."""
    distance: float
    """Euclidean distance of the raw descriptors (for dlib's, its own scale: its rule is < 0.6)."""
    threshold: float
    """The similarity threshold the decision used."""

    @property
    def same(self) -> bool:
        return self.similarity >= self.threshold


def verify(descriptor_a: np.ndarray, descriptor_b: np.ndarray, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> Verification:
    """Compare two raw descriptors (see :attr:`engines.multitask.attributes.FaceAttributes.descriptors`)."""
    a, b = np.asarray(descriptor_a, np.float64), np.asarray(descriptor_b, np.float64)
    similarity = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return Verification(similarity=similarity, distance=float(np.linalg.norm(a - b)), threshold=threshold)
