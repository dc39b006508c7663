"""Per-stream schedules: when a frame gets a full detection.

A :class:`SceneCut` compares each frame with the one before (64x36 grey thumbnails, mean
absolute difference); a cut forces full detection and analysis so no track crosses it on
position alone.
"""

from __future__ import annotations

import cv2
import numpy as np

from stream_worker.messages.state import SceneState, pack_array, unpack_array


class SceneCut:
    """Detects cuts between consecutive frames of one stream (cheap: 64x36 grey thumbnails)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> bool:
        """True for the first frame and for frames unlike the one before."""
        grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (64, 36), interpolation=cv2.INTER_AREA)
        previous, self._previous = self._previous, grey.astype(np.float32)
        if previous is None:
            return True
        return bool(self.threshold > 0 and np.abs(self._previous - previous).mean() > self.threshold)

    def to_state(self) -> SceneState:
        return SceneState(previous=pack_array(self._previous))

    def restore(self, state: SceneState) -> None:
        self._previous = unpack_array(state.previous)
