"""Where results go: JSON lines, an annotated video, best-shot thumbnails (the Kafka result
topics are published by :mod:`stream_worker.kafka.worker`, which also takes these sinks).

Every sink takes each :class:`FrameOutput` in stream order through :meth:`write`, and
the end of a stream's tracks through :meth:`write_events`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Protocol, TextIO

import av
import cv2
import numpy as np

from engines.fileio import atomic_write_bytes
from stream_worker.messages.results import FaceRecord, TrackEvent
from stream_worker.pipeline.face_pipeline import FrameOutput
from stream_worker.pipeline.frames import check_stream_id

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, output: FrameOutput) -> None: ...

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        """Track events that belong to no frame (tracks ended at the end of a stream)."""
        ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line: each frame's result, then the track events it caused."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._out: TextIO = path.open("w") if path is not None else sys.stdout

    def write(self, output: FrameOutput) -> None:
        self._out.write(output.result.model_dump_json(by_alias=True) + "\n")
        self.write_events(output.frame.stream_id, output.events, output.thumbnails)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        for event in events:
            self._out.write(event.model_dump_json(by_alias=True) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self.path is not None:
            self._out.close()


class ThumbnailSink:
    """Each ended track's best shot as ``<folder>/<stream>/track-<id>.jpg``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def reference(self, stream_id: str, track_id: int) -> str:
        return str(self.folder / check_stream_id(stream_id) / f"track-{track_id}.jpg")

    def write(self, output: FrameOutput) -> None:
        self._save(output.frame.stream_id, output.thumbnails)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        self._save(stream_id, thumbnails)

    def _save(self, stream_id: str, thumbnails: dict[int, bytes]) -> None:
        for track_id, jpeg in thumbnails.items():
            path = Path(self.reference(stream_id, track_id))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, jpeg)

    def close(self) -> None:
        pass


def _colour(track_id: int | None) -> tuple[int, int, int]:
    if track_id is None:
        return (160, 160, 160)
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


ATTRIBUTE_LABELS = {"Eyeglasses": "glasses", "Wearing_Hat": "hat", "Facial_Hair": "beard", "Mustache": "mustache",
                    "Goatee": "goatee", "Bald": "bald", "Smiling": "smiling", "Mouth_Slightly_Open": "mouth open",
                    "Blurry": "blurry"}


def trait_line(face: FaceRecord) -> str:
    """The face's likely attributes (P > 0.5) and expression, short words, or ''."""
    words = [ATTRIBUTE_LABELS.get(name, name) for name, p in (face.attributes or {}).items() if p > 0.5]
    if face.expression is not None:
        words.append(face.expression.value)
    return ", ".join(words)


def annotate(image: np.ndarray, output: FrameOutput) -> np.ndarray:
    """The frame with each face's box, track id, name (or 'unknown'), age and gender drawn,
    and below the box its likely attributes and expression."""
    canvas = image.copy()
    for face in output.result.faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = _colour(face.track_id)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        who = face.identity.name if face.identity is not None else "unknown"
        track = f"#{face.track_id} " if face.track_id is not None else ""
        label = f"{track}{who}, {face.gender[0].upper()} {face.age:.0f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - th - 6, 0)
        left = max(0, min(x1, canvas.shape[1] - tw - 4))  # keep the label inside the frame
        cv2.rectangle(canvas, (left, top), (left + tw + 4, top + th + 6), colour, -1)
        cv2.putText(canvas, label, (left + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        traits = trait_line(face)
        if traits:
            (tw, th), _ = cv2.getTextSize(traits, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
            top = min(y2 + 2, canvas.shape[0] - th - 6)
            left = max(0, min(x1, canvas.shape[1] - tw - 4))
            cv2.rectangle(canvas, (left, top), (left + tw + 4, top + th + 6), colour, -1)
            cv2.putText(canvas, traits, (left + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return canvas


class VideoSink:
    """Annotated frames as an H.264 MP4, one file per stream (``name.<stream>.mp4`` when
    there are several streams)."""

    def __init__(self, path: Path, *, several_streams: bool) -> None:
        self.path = path
        self.several = several_streams
        self._writers: dict[str, tuple[av.container.OutputContainer, av.video.stream.VideoStream, float]] = {}

    def _file(self, stream_id: str) -> Path:
        if not self.several:
            return self.path
        return self.path.with_name(f"{self.path.stem}.{check_stream_id(stream_id)}{self.path.suffix or '.mp4'}")

    def write(self, output: FrameOutput) -> None:
        stream_id = output.frame.stream_id
        height, width = output.frame.image.shape[:2]
        if stream_id not in self._writers:
            file = self._file(stream_id)
            file.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(file), "w")
            stream = container.add_stream("libx264", rate=30, options={"crf": "23", "preset": "veryfast"})
            stream.width, stream.height = width - width % 2, height - height % 2
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1, 1000)
            self._writers[stream_id] = (container, stream, -1.0)
        container, stream, last_pts = self._writers[stream_id]
        image = annotate(output.frame.image, output)[: stream.height, : stream.width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        pts = output.frame.pts_ms if output.frame.pts_ms is not None else output.frame.index * 1000 / 30
        pts = max(pts, last_pts + 1)  # strictly increasing
        frame.pts, frame.time_base = int(pts), Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
        self._writers[stream_id] = (container, stream, pts)

    def write_events(self, stream_id: str, events: Sequence[TrackEvent], thumbnails: dict[int, bytes]) -> None:
        self._finish(stream_id)

    def _finish(self, stream_id: str) -> None:
        writer = self._writers.pop(stream_id, None)
        if writer is None:
            return
        container, stream, _ = writer
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        log.info("annotated video of %s written to %s", stream_id, self._file(stream_id))

    def close(self) -> None:
        for stream_id in list(self._writers):
            self._finish(stream_id)
