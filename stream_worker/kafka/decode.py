"""Frames-topic payloads to :class:`Frame` objects, one decoder per stream.

Images decode on their own. Video chunks go through a per-stream PyAV codec context fed by
its codec parser: parameter sets (SPS/PPS) seen in one chunk serve the following chunks,
and the decoder is drained at the end of every chunk, so each frame comes out while its
own message is being processed (its offset is committed only after its results are
acknowledged). A chunk must therefore be a closed group of pictures: it starts with a
keyframe, as ``facestream produce --format h264`` writes them. MPEG-TS segments are
demuxed one segment at a time. A chunk with no decodable frame is a dead letter; damaged
packets inside a chunk that still yields frames are skipped and counted.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import av
import numpy as np

from engines.errors import ImageTooLargeError, InvalidImageError
from engines.image import decode_image
from stream_worker.kafka.wire import VIDEO_TYPES, FrameMessage, MalformedMessageError
from stream_worker.pipeline.frames import Frame

log = logging.getLogger(__name__)


def _received(message: FrameMessage) -> datetime:
    return datetime.fromtimestamp(message.capture_ms / 1000, UTC)


class StreamDecoder:
    """Decodes one stream's messages; not thread-safe (one per stream)."""

    def __init__(self, stream_id: str, *, max_pixels: int) -> None:
        self.stream_id = stream_id
        self.max_pixels = max_pixels
        self.corrupt_packets = 0
        self._codec: av.CodecContext | None = None
        self._codec_name = ""

    def decode(self, message: FrameMessage, payload: bytes) -> list[Frame]:
        if not payload:
            raise MalformedMessageError("empty payload", kind="payload")
        if not message.is_video:
            if message.content_type == "image/jpeg" and not payload.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
                # libjpeg decodes a truncated JPEG into a grey-padded image without an error
                raise MalformedMessageError("truncated JPEG (no end-of-image marker)", kind="decode")
            try:
                image = decode_image(payload, name=f"{self.stream_id} frame {message.frame_index}",
                                     max_pixels=self.max_pixels)
            except InvalidImageError as exc:
                kind = "oversized" if isinstance(exc, ImageTooLargeError) else "decode"
                raise MalformedMessageError(str(exc), kind=kind) from None
            return [Frame(self.stream_id, message.frame_index, message.pts_ms, image, _received(message))]
        try:
            images = self._decode_video(message, payload)
        except (ValueError, av.error.FFmpegError) as exc:  # what PyAV raises on data it cannot use
            raise MalformedMessageError(f"{message.content_type} chunk cannot be decoded: {exc}", kind="decode") \
                from None
        if not images:
            raise MalformedMessageError(f"{message.content_type} chunk: no decodable frame "
                                        "(a chunk must start with a keyframe and its parameter sets)", kind="decode")
        step = 1000.0 / message.fps if message.fps else None
        frames = []
        for i, image in enumerate(images):
            pts = None
            if message.pts_ms is not None:
                pts = message.pts_ms + i * step if step is not None else (message.pts_ms if i == 0 else None)
            frames.append(Frame(self.stream_id, message.frame_index + i, pts, image, _received(message)))
        return frames

    def _check_size(self, frame: av.VideoFrame) -> None:
        if frame.width * frame.height > self.max_pixels:
            raise MalformedMessageError(f"video frame {frame.width}x{frame.height} exceeds the decode limit of "
                                        f"{self.max_pixels} pixels", kind="oversized")

    def _decode_video(self, message: FrameMessage, payload: bytes) -> list[np.ndarray]:
        codec_name = VIDEO_TYPES[message.content_type]
        if codec_name == "mpegts":
            return self._decode_segment(payload)
        if self._codec is None or self._codec_name != codec_name:
            self._codec = av.CodecContext.create(codec_name, "r")
            self._codec_name = codec_name
        codec = self._codec
        images: list[np.ndarray] = []
        try:
            packets = [*codec.parse(payload), *codec.parse(None)]  # parse(None) flushes the parser
        except av.error.FFmpegError as exc:
            codec.flush_buffers()
            raise MalformedMessageError(f"{message.content_type} chunk cannot be parsed: {exc}", kind="decode") from None
        for packet in [*packets, None]:  # None drains the decoder
            try:
                for frame in codec.decode(packet):
                    self._check_size(frame)
                    images.append(frame.to_ndarray(format="bgr24"))
            except av.error.FFmpegError as exc:
                self.corrupt_packets += 1
                log.debug("stream %s: skipped a damaged packet: %s", self.stream_id, exc)
        codec.flush_buffers()  # ready for the next chunk (keeps the parameter sets)
        return images

    def _decode_segment(self, payload: bytes) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        try:
            with av.open(io.BytesIO(payload), format="mpegts") as container:
                if not container.streams.video:
                    raise MalformedMessageError("MPEG-TS segment without a video stream", kind="decode")
                for packet in container.demux(container.streams.video[0]):
                    try:
                        for frame in packet.decode():
                            self._check_size(frame)
                            images.append(frame.to_ndarray(format="bgr24"))
                    except av.error.FFmpegError:
                        self.corrupt_packets += 1
        except av.error.FFmpegError as exc:
            if not images:
                raise MalformedMessageError(f"MPEG-TS segment cannot be read: {exc}", kind="decode") from None
        return images
