"""Per-face analysis results and the decoders that produce them from raw outputs.

Decoders are pure functions of network outputs and geometry; they hold constants, never
sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engines.detections import frozen_column

# --- age and gender -----------------------------------------------------------------------

AGE_CLASSES = np.concatenate([[0.25], np.arange(1, 81)]).astype(np.float64)
"""The age (years) each of the age net's 81 classes stands for."""


def decode_age(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected age and the distribution's standard deviation, in years, per face."""
    p = probabilities.astype(np.float64)
    mean = p @ AGE_CLASSES
    var = p @ AGE_CLASSES**2 - mean**2
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0)).astype(np.float32)


def decode_gender(probabilities: np.ndarray) -> np.ndarray:
    """P(male) per face (the net's outputs are ordered female, male)."""
    return probabilities[:, 1].astype(np.float32)


# --- head pose from MTCNN's 5 landmarks ------------------------------------------------------

# A generic face in millimetres, camera-aligned for a frontal face: x to the image's right,
# y down, z away from the camera; origin at the nose tip. Points in MTCNN's order: left eye
# centre, right eye centre, nose tip, left and right mouth corners (image left/right).
# x and y: the median MTCNN landmark layout of the 136 single-face photos of the shared
# set, eye line level, scaled to a 63 mm distance between the eyes (nose 0.606 and mouth
# 1.045 eye-distances below the eye line, mouth 0.45 eye-distances wide on each side);
# depths: typical anthropometry (eyes 25 mm, mouth corners 18 mm behind the nose tip).
FACE_MODEL_MM = np.array(
    [[-31.5, -38.2, 25.0], [31.5, -38.2, 25.0], [0.0, 0.0, 0.0], [-28.2, 27.6, 18.0], [28.2, 27.6, 18.0]],
    dtype=np.float64,
)


MOUTH_VERTICAL_WEIGHT = 0.3
"""Weight of the mouth corners' position across the eye line in the pose fit (the other
coordinates weigh 1). Mouth corners move with expression: a broad smile raises them by a
third of the nose-to-mouth distance, which an unweighted fit reads as the head tilting
down (a smiling frontal face in ``kit_with_rose.jpg``: pitch -57 degrees unweighted, -11
with this weight; README, "Head pose")."""


def head_pose(landmarks: np.ndarray, image_width: int | np.ndarray, image_height: int | np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees from MTCNN's 5 landmarks, per face (image sizes may be
    given per face).

    Fits :data:`FACE_MODEL_MM` to the landmarks for a pinhole camera with focal length
    max(width, height) and the principal point at the image centre: Gauss-Newton steps
    minimise the reprojection error with the mouth corners' offsets across the eye line
    weighted by :data:`MOUTH_VERTICAL_WEIGHT`, from two starts (OpenCV's SQPnP solution, and
    a face turned straight at the camera at SQPnP's position; with the mouth weighing less
    the fit can have two minima), keeping the better fit; the rotation is decomposed.
    Signs: yaw > 0 when the face turns towards the image's right,
    pitch > 0 when it tilts up, roll > 0 when it leans clockwise in the image. A generic
    model makes this a coarse estimate (about +-10 degrees), good for ranking shots.
    Degenerate landmarks give NaN (quality then treats the pose as unusable).
    """
    widths = np.broadcast_to(np.asarray(image_width, np.float64), len(landmarks))
    heights = np.broadcast_to(np.asarray(image_height, np.float64), len(landmarks))
    out = np.zeros((len(landmarks), 3), np.float32)
    for i, points in enumerate(landmarks.astype(np.float64)):
        focal = max(widths[i], heights[i])
        camera = np.array([[focal, 0, widths[i] / 2], [0, focal, heights[i] / 2], [0, 0, 1]], dtype=np.float64)
        try:
            ok, rvec, tvec = cv2.solvePnP(FACE_MODEL_MM, points.reshape(5, 1, 2), camera, None,
                                          flags=cv2.SOLVEPNP_SQPNP)
            if ok:
                fits = [_refine_pose(points, camera, np.concatenate([start, tvec.ravel()]))
                        for start in (rvec.ravel(), np.zeros(3))]
                found = [fit for fit in fits if fit is not None]
                rvec = min(found, key=lambda fit: fit[1])[0] if found else None
        except (cv2.error, np.linalg.LinAlgError):  # degenerate landmarks (e.g. all in one point on a tiny face)
            ok = False
        if not ok or rvec is None:
            out[i] = np.nan
            continue
        rotation, _ = cv2.Rodrigues(rvec)
        angles = cv2.RQDecomp3x3(rotation)[0]  # degrees about x, y, z
        pitch, yaw, roll = angles
        out[i] = (-yaw, -pitch, roll)
    return out


def _refine_pose(points: np.ndarray, camera: np.ndarray, pose: np.ndarray,
                 steps: int = 10) -> tuple[np.ndarray, float] | None:
    """Gauss-Newton on (rvec, tvec) with the mouth corners' cross-eye-line residuals down-weighted;
    returns the rotation vector and the weighted squared error (None if the fit diverges)."""
    eye_line = points[1] - points[0]
    length = float(np.hypot(*eye_line))
    if length < 1e-6:
        return None
    u = eye_line / length
    v = np.array([-u[1], u[0]])
    # per point, a 2x2 map from image (x, y) residuals to weighted (along, across) the eye line
    weights = np.stack([np.stack([u, v])] * 3 + [np.stack([u, MOUTH_VERTICAL_WEIGHT * v])] * 2)
    for _ in range(steps):
        projected, jacobian = cv2.projectPoints(FACE_MODEL_MM, pose[:3], pose[3:], camera, None)
        residual = np.einsum("pij,pj->pi", weights, projected.reshape(5, 2) - points).reshape(-1)
        J = np.einsum("pij,pjk->pik", weights, jacobian[:, :6].reshape(5, 2, 6)).reshape(10, 6)
        step = np.linalg.solve(J.T @ J + 1e-9 * np.eye(6), -J.T @ residual)
        pose = pose + step
        if not np.all(np.isfinite(pose)):
            return None
        if np.abs(step[:3]).max() < 1e-3:  # radians (0.06 degrees): far below the model's accuracy
            break
    projected, _ = cv2.projectPoints(FACE_MODEL_MM, pose[:3], pose[3:], camera, None)
    error = float((np.einsum("pij,pj->pi", weights, projected.reshape(5, 2) - points) ** 2).sum())
    return pose[:3], error


# --- quality ---------------------------------------------------------------------------------

QUALITY_FULL_SIZE_PX = 112.0
"""Face side (pixels of the frame) at and above which size no longer limits quality."""
QUALITY_MIN_SIZE_PX = 20.0
"""Face side at and below which quality is 0."""
QUALITY_SHARPNESS_HALF = 60.0
"""Variance of the Laplacian of the 150 px gray chip at which sharpness scores 0.5."""


def sharpness(chips150: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each (150, 150, 3) uint8 RGB chip's gray image."""
    values = np.empty(len(chips150), np.float32)
    for i, chip in enumerate(chips150):
        gray = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
        values[i] = cv2.Laplacian(gray, cv2.CV_32F).var()
    return values


def quality_score(
    face_side_px: np.ndarray, laplacian_var: np.ndarray, pose_deg: np.ndarray, detector_score: np.ndarray
) -> np.ndarray:
    """Face quality in [0, 1]: the geometric mean of four factors, each in [0, 1].

    - size: (side - 20) / (112 - 20), clipped: 0 for faces of 20 px or less, 1 from 112 px.
    - sharpness: v / (v + 60), v the variance of the Laplacian of the 150 px gray chip.
    - pose: cos(yaw) * cos(pitch), 0 beyond 90 degrees.
    - detection: the detector's face probability.

    Any factor at 0 makes the quality 0. A frontal, sharp, large face scores above 0.9.
    """
    size = np.clip((face_side_px - QUALITY_MIN_SIZE_PX) / (QUALITY_FULL_SIZE_PX - QUALITY_MIN_SIZE_PX), 0, 1)
    sharp = laplacian_var / (laplacian_var + QUALITY_SHARPNESS_HALF)
    yaw, pitch = np.radians(np.nan_to_num(pose_deg[:, 0], nan=90.0)), np.radians(np.nan_to_num(pose_deg[:, 1], nan=90.0))
    pose = np.clip(np.cos(yaw), 0, 1) * np.clip(np.cos(pitch), 0, 1)
    factors = np.stack([size, sharp, pose, np.clip(detector_score, 0, 1)]).astype(np.float64)
    return np.prod(factors, axis=0) ** 0.25


# --- the result type -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FaceAttributes:
    """Multi-task results for the faces of one image, row i for detection i.

    - ``embeddings``: (N, D) L2-normalised identity embeddings (cosine = dot product), D the
      recognizer's dimension (128; 256 for the fused one).
    - ``descriptor_norms``: (N,) norms of the recognizer's raw descriptors: ``embeddings * norms``
      gives its own values (for dlib, on whose scale dlib's same-person threshold is 0.6).
    - ``ages``, ``age_stds``: (N,) expected age and the spread of the predicted distribution.
    - ``male_probs``: (N,) P(male).
    - ``poses``: (N, 3) yaw, pitch, roll in degrees (see :func:`head_pose`).
    - ``qualities``: (N,) in [0, 1] (see :func:`quality_score`).
    - ``sharpness``: (N,) variance of the Laplacian of the 150 px gray chip (a factor of quality).
    - ``align_points``: (N, 5, 2) dlib's 5 points the chips were aligned on (MTCNN's when
      the trained heads run without dlib's alignment).
    - ``attribute_probs``: (N, K) P(attribute) for ``attribute_names`` (K = 0 without the
      trained heads).
    - ``expression_probs``: (N, E) probabilities of ``expression_names`` (E = 0 when no
      expression head is shipped).
    """

    embeddings: np.ndarray
    descriptor_norms: np.ndarray
    ages: np.ndarray
    age_stds: np.ndarray
    male_probs: np.ndarray
    poses: np.ndarray
    qualities: np.ndarray
    sharpness: np.ndarray
    align_points: np.ndarray
    attribute_probs: np.ndarray | None = None
    attribute_names: tuple[str, ...] = ()
    expression_probs: np.ndarray | None = None
    expression_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = np.asarray(self.embeddings).shape[0]
        for name, names in (("attribute_probs", self.attribute_names), ("expression_probs", self.expression_names)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros((n, len(names)), np.float32))
        shapes = {
            "embeddings": (n, None), "descriptor_norms": (n,), "ages": (n,), "age_stds": (n,),
            "male_probs": (n,), "poses": (n, 3), "qualities": (n,), "sharpness": (n,), "align_points": (n, 5, 2),
            "attribute_probs": (n, len(self.attribute_names)), "expression_probs": (n, len(self.expression_names)),
        }
        for name, shape in shapes.items():
            object.__setattr__(self, name, frozen_column(name, getattr(self, name), shape))

    @classmethod
    def empty(cls, dim: int = 128, attribute_names: tuple[str, ...] = (),
              expression_names: tuple[str, ...] = ()) -> FaceAttributes:
        return cls(
            np.zeros((0, dim)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros(0),
            np.zeros(0), np.zeros((0, 5, 2)), None, attribute_names, None, expression_names,
        )

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __getitem__(self, index: Any) -> FaceAttributes:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return FaceAttributes(
            self.embeddings[index], self.descriptor_norms[index], self.ages[index], self.age_stds[index],
            self.male_probs[index], self.poses[index], self.qualities[index], self.sharpness[index],
            self.align_points[index], self.attribute_probs[index], self.attribute_names,
            self.expression_probs[index], self.expression_names,
        )

    def attributes_of(self, i: int) -> dict[str, float]:
        """Face ``i``'s attribute probabilities by name (empty without the trained heads)."""
        return {name: float(p) for name, p in zip(self.attribute_names, self.attribute_probs[i])}

    def expression_of(self, i: int) -> dict[str, float]:
        """Face ``i``'s expression probabilities by name (empty when not shipped)."""
        return {name: float(p) for name, p in zip(self.expression_names, self.expression_probs[i])}

    @property
    def descriptors(self) -> np.ndarray:
        """The recognizer's raw descriptors (N, D)."""
        return self.embeddings * self.descriptor_norms[:, None]

    def to_json(self, i: int, *, embedding: bool = False) -> dict[str, Any]:
        """The JSON fields of face ``i``."""
        record = attribute_record(
            float(self.ages[i]), float(self.age_stds[i]), float(self.male_probs[i]), self.poses[i],
            float(self.qualities[i]),
        )
        if embedding:
            record["embedding"] = [round(float(v), 6) for v in self.embeddings[i]]
        return record


def attribute_record(age: float, age_std: float, male: float, pose: np.ndarray, quality: float) -> dict[str, Any]:
    """The JSON fields of one face's attributes (shared by fresh and carried-over analyses)."""
    yaw, pitch, roll = (None if math.isnan(v) else round(float(v), 1) for v in pose)
    return {
        "age": round(age, 1),
        "age_std": round(age_std, 1),
        "gender": "male" if male > 0.5 else "female",
        "gender_score": round(max(male, 1.0 - male), 4),
        "pose": {"yaw": yaw, "pitch": pitch, "roll": roll},
        "quality": round(quality, 3),
    }
