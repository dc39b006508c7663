"""``facestream produce``: publish a video file or camera into a frames topic.

``jpeg``: one JPEG per frame. ``h264``: the stream is re-encoded with libx264 into closed
groups of pictures of ``gop_frames`` frames, without B-frames, parameter sets repeated on
every keyframe; each group is one message (Annex B), so a worker can start decoding at
any message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from stream_worker.kafka.client import KafkaUnavailableError
from stream_worker.kafka.wire import PRODUCE_FORMATS, FrameMessage
from stream_worker.pipeline.frames import Frame

log = logging.getLogger(__name__)

FORMATS = PRODUCE_FORMATS


@dataclass
class ProduceStats:
    frames: int = 0
    messages: int = 0
    bytes: int = 0


def _capture_ms(frame: Frame) -> int:
    return int(frame.received.timestamp() * 1000)


class H264Chunker:
    """Encodes frames into one Annex B chunk per closed GOP."""

    def __init__(self, width: int, height: int, fps: float, gop_frames: int) -> None:
        self.codec = av.CodecContext.create("libx264", "w")
        self.codec.width, self.codec.height = width - width % 2, height - height % 2
        self.codec.pix_fmt = "yuv420p"
        self.codec.time_base = Fraction(1, 1000)
        self.codec.framerate = Fraction(fps).limit_denominator(1001)
        self.codec.options = {
            "preset": "veryfast", "tune": "zerolatency", "crf": "20",
            "x264-params": f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0:repeat-headers=1:bframes=0",
        }
        self._waiting: list[Frame] = []
        """Frames given to the encoder, not yet out as a packet."""
        self._frames: list[Frame] = []
        """Frames of the chunk being built."""
        self._data = bytearray()

    def add(self, frame: Frame) -> list[tuple[list[Frame], bytes]]:
        """Encode a frame; returns the chunks that it completed."""
        image = np.ascontiguousarray(frame.image[: self.codec.height, : self.codec.width])
        video = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        video.pts = int(frame.pts_ms if frame.pts_ms is not None else frame.index * 40)
        self._waiting.append(frame)
        done = []
        for packet in self.codec.encode(video):
            done += self._packet(packet)
        return done

    def _packet(self, packet: av.Packet) -> list[tuple[list[Frame], bytes]]:
        """Without B-frames, packets come out in frame order, one per frame."""
        done = []
        if packet.is_keyframe and self._data:
            done.append((self._frames, bytes(self._data)))
            self._frames, self._data = [], bytearray()
        self._data += bytes(packet)
        self._frames.append(self._waiting.pop(0))
        return done

    def finish(self) -> list[tuple[list[Frame], bytes]]:
        done = []
        for packet in self.codec.encode(None):
            done += self._packet(packet)
        if self._data:
            done.append((self._frames, bytes(self._data)))
            self._frames, self._data = [], bytearray()
        return done


def publish_frames(
    producer: Any, topic: str, frames: Iterable[Frame], *, fmt: str = "jpeg", fps: float = 25.0, gop_frames: int = 25,
    jpeg_quality: int = 90, on_message: Callable[[ProduceStats], None] | None = None,
    stop: threading.Event | None = None, realtime: bool = False,
) -> ProduceStats:
    """Publish a stream's frames (keyed by stream id); returns counts. Blocks until the
    broker acknowledged every message."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    stats = ProduceStats()
    chunker: H264Chunker | None = None
    started = time.monotonic()

    futures = []

    def send(message: FrameMessage, payload: bytes, count: int) -> None:
        futures.append(producer.send(topic, key=message.stream_id.encode(), value=payload, headers=message.headers()))
        stats.frames += count
        stats.messages += 1
        stats.bytes += len(payload)
        if on_message is not None:
            on_message(stats)

    def send_chunk(chunk_frames: list[Frame], payload: bytes) -> None:
        first = chunk_frames[0]
        send(FrameMessage(first.stream_id, "video/h264", first.index, _capture_ms(first), first.pts_ms, fps),
             payload, len(chunk_frames))

    for frame in frames:
        if stop is not None and stop.is_set():
            break
        if realtime:  # pace a file like a live camera
            time.sleep(max(0.0, started + frame.index / fps - time.monotonic()))
        if fmt == "jpeg":
            ok, encoded = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                log.warning("frame %d of %s could not be encoded; skipped", frame.index, frame.stream_id)
                continue
            send(FrameMessage(frame.stream_id, "image/jpeg", frame.index, _capture_ms(frame), frame.pts_ms),
                 encoded.tobytes(), 1)
        else:
            if chunker is None:
                height, width = frame.image.shape[:2]
                chunker = H264Chunker(width, height, fps, gop_frames)
            for chunk_frames, payload in chunker.add(frame):
                send_chunk(chunk_frames, payload)
    if chunker is not None:
        for chunk_frames, payload in chunker.finish():
            send_chunk(chunk_frames, payload)
    producer.flush()
    failed = [f for f in futures if not f.succeeded()]
    if failed:
        reason = failed[0].exception or "not acknowledged"
        raise KafkaUnavailableError(f"{len(failed)} of {len(futures)} messages were not published to {topic}: {reason}")
    return stats
