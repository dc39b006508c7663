"""The frames-topic wire format and the per-stream decoders, on real video (no broker)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import cv2
import jsonschema
import numpy as np
import pytest

from stream_worker.kafka.decode import StreamDecoder
from stream_worker.kafka.produce import H264Chunker
from stream_worker.kafka.wire import (
    DEAD_LETTER_KINDS,
    FrameMessage,
    MalformedMessageError,
    dead_letter_headers,
    header_dict,
    parse_frame_message,
)
from stream_worker.messages.results import schema_for
from stream_worker.pipeline.frames import Frame


@pytest.fixture(scope="module")
def clip_frames(hamilton_frames: list[Frame]) -> list[Frame]:
    return hamilton_frames[:80]


def test_headers_round_trip_and_validate_against_the_schema() -> None:
    message = FrameMessage("cam-7", "video/h264", 125, 1_764_000_000_000, 4170.5, 29.97)
    headers = message.headers()
    jsonschema.validate(header_dict(headers), schema_for("facestream.frame-input/1"))
    assert parse_frame_message(b"cam-7", headers) == FrameMessage("cam-7", "video/h264", 125, 1_764_000_000_000,
                                                                   4170.5, 29.97)


@pytest.mark.parametrize(("key", "headers", "kind", "reason"), [
    (b"c", [], "header", "missing header content-type"),
    (b"c", [("content-type", b"text/plain")], "content-type", "unsupported content-type"),
    (b"c", [("content-type", b"image/jpeg")], "header", "missing header fs-stream-id"),
    (b"x", [("content-type", b"image/jpeg"), ("fs-stream-id", b"c"), ("fs-frame-index", b"1"),
            ("fs-capture-ms", b"1")], "key", "differs from fs-stream-id"),
    (b"c", [("content-type", b"image/jpeg"), ("fs-stream-id", b"c"), ("fs-capture-ms", b"1")],
     "header", "missing header fs-frame-index"),
    (b"c", [("content-type", b"image/jpeg"), ("fs-stream-id", b"c"), ("fs-frame-index", b"-3"),
            ("fs-capture-ms", b"1")], "header", "must be >= 0"),
    (b"c", [("content-type", b"image/jpeg"), ("fs-stream-id", b"c"), ("fs-frame-index", b"one"),
            ("fs-capture-ms", b"1")], "header", "not an integer"),
    (b"c", [("content-type", b"video/h264"), ("fs-stream-id", b"c"), ("fs-frame-index", b"0"),
            ("fs-capture-ms", b"1")], "header", "missing header fs-fps"),
    (b"c", [("content-type", b"image/jpeg"), ("fs-stream-id", b"\xff\xfe")], "header", "not UTF-8"),
])
def test_malformed_headers_are_refused_with_a_reason(key: bytes, headers: list, kind: str, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(MalformedMessageError, match=reason) as caught:
        parse_frame_message(key, headers)
    assert caught.value.kind == kind and kind in DEAD_LETTER_KINDS


def test_dead_letter_headers_keep_the_original_and_say_why() -> None:
    original = [("content-type", b"image/jpeg"), ("fs-stream-id", b"c")]
    headers = dict(dead_letter_headers(original, "decode", "not a decodable image", "faces.frames", 2, 41, "w1"))
    assert headers["content-type"] == b"image/jpeg" and headers["fs-stream-id"] == b"c"
    assert (headers["fs-dlq-kind"], headers["fs-dlq-reason"]) == (b"decode", b"not a decodable image")
    assert (headers["fs-dlq-partition"], headers["fs-dlq-offset"]) == (b"2", b"41")


def test_jpeg_frames_decode_and_bad_images_are_malformed(clip_frames: list[Frame]) -> None:
    decoder = StreamDecoder("cam", max_pixels=1_000_000)
    jpeg = cv2.imencode(".jpg", clip_frames[3].image)[1].tobytes()
    [frame] = decoder.decode(FrameMessage("cam", "image/jpeg", 3, 1_764_000_000_123, 100.0), jpeg)
    assert frame.index == 3 and frame.pts_ms == 100.0 and frame.image.shape == (360, 640, 3)
    assert frame.received.timestamp() == pytest.approx(1_764_000_000.123)
    assert np.abs(frame.image.astype(int) - clip_frames[3].image).mean() < 3
    for payload, kind, reason in ((b"", "payload", "empty payload"),
                                  (b"\xff\xd8garbage\xff\xd9" * 10, "decode", "not a decodable image"),
                                  (jpeg[:60], "decode", "truncated JPEG"), (jpeg[: len(jpeg) // 2], "decode", "truncated JPEG")):
        with pytest.raises(MalformedMessageError, match=reason) as caught:
            decoder.decode(FrameMessage("cam", "image/jpeg", 4, 0), payload)
        assert caught.value.kind == kind
    with pytest.raises(MalformedMessageError, match="exceeds") as caught:
        StreamDecoder("cam", max_pixels=100_000).decode(FrameMessage("cam", "image/jpeg", 5, 0), jpeg)
    assert caught.value.kind == "oversized"


def _chunks(frames: list[Frame], gop: int) -> list[tuple[list[Frame], bytes]]:
    chunker = H264Chunker(640, 360, 29.97, gop)
    chunks = [c for f in frames for c in chunker.add(f)]
    return chunks + chunker.finish()


def test_h264_chunks_are_closed_gops_that_decode_from_any_chunk(clip_frames: list[Frame]) -> None:
    chunks = _chunks(clip_frames, 20)
    assert [len(f) for f, _ in chunks] == [20, 20, 20, 20]
    assert [f[0].index for f, _ in chunks] == [0, 20, 40, 60]
    decoder = StreamDecoder("cam", max_pixels=1_000_000)
    decoded = []
    for frames, payload in chunks[2:]:  # a worker that takes over mid-stream starts at any message
        message = FrameMessage("cam", "video/h264", frames[0].index, 0, frames[0].pts_ms, 29.97)
        decoded += decoder.decode(message, payload)
    assert [f.index for f in decoded] == list(range(40, 80))
    assert decoded[1].pts_ms == pytest.approx(clip_frames[40].pts_ms + 1000 / 29.97, abs=1e-6)
    for got in decoded:
        assert np.abs(got.image.astype(int) - clip_frames[got.index].image).mean() < 4


def test_a_broken_chunk_is_malformed_and_the_next_one_decodes(clip_frames: list[Frame]) -> None:
    chunks = _chunks(clip_frames[:40], 20)
    decoder = StreamDecoder("cam", max_pixels=1_000_000)
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    for payload in (b"\x00\x00\x00\x01" + noise, chunks[1][1][len(chunks[1][1]) // 2:]):  # noise; a chunk's tail
        with pytest.raises(MalformedMessageError, match="no decodable frame"):
            decoder.decode(FrameMessage("cam", "video/h264", 0, 0, None, 30.0), payload)
    assert len(decoder.decode(FrameMessage("cam", "video/h264", 20, 0, None, 30.0), chunks[1][1])) == 20


def _encode(frames: list[Frame], codec: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        for i, frame in enumerate(frames):
            video = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
            video.pts = i
            for packet in stream.encode(video):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(("codec", "fmt", "content_type"), [
    ("libx265", "hevc", "video/h265"), ("libx264", "mpegts", "video/mp2t"),
])
def test_h265_chunks_and_mpegts_segments(clip_frames: list[Frame], codec: str, fmt: str, content_type: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    payload = _encode(clip_frames[:12], codec, fmt)
    decoded = StreamDecoder("cam", max_pixels=1_000_000).decode(FrameMessage("cam", content_type, 0, 0, 0.0, 30.0), payload)
    assert [f.index for f in decoded] == list(range(12))
    assert np.abs(decoded[5].image.astype(int) - clip_frames[5].image).mean() < 6
