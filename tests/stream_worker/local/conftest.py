"""Fixtures for the local worker's tests."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

CLIP = "face_recognition/examples/short_hamilton_clip.mp4"


@pytest.fixture(scope="session")
def short_clip(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The shared clip's first 60 frames, unchanged (MPEG-TS), and their number: for tests of
    how the worker runs streams, where the whole clip would only add time."""
    out = tmp_path_factory.mktemp("short") / "short.ts"
    frames = 0
    with av.open(str(faces_dir / CLIP)) as src, av.open(str(out), "w", format="mpegts") as dst:
        video = src.streams.video[0]
        stream = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is None:
                continue
            if packet.is_keyframe and frames >= 60:
                break
            packet.stream = stream
            dst.mux(packet)
            frames += 1
    with av.open(str(out)) as check:
        decoded = sum(1 for _ in check.decode(video=0))
    assert decoded >= 60
    return out, decoded
