"""Sources: files, folders, damaged input, and a live stream that drops and comes back."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from stream_worker.local.sources import CorruptSourceError, FolderSource, open_source

CLIP = "face_recognition/examples/short_hamilton_clip.mp4"


def remux(source: Path, out: Path, container: str, options: dict[str, str] | None = None) -> Path:
    """``source``'s video packets, unchanged, in another container."""
    with av.open(str(source)) as src, av.open(str(out), "w", format=container, options=options or {}) as dst:
        video = src.streams.video[0]
        stream = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return out


@pytest.fixture(scope="module")
def clip_ts(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip remuxed to MPEG-TS (streamable, so a cut file still plays up to the cut)."""
    return remux(faces_dir / CLIP, tmp_path_factory.mktemp("ts") / "clip.ts", "mpegts")


def test_file_frames_have_indices_and_timestamps(faces_dir: Path) -> None:
    frames = list(open_source("clip", str(faces_dir / CLIP)).frames(threading.Event()))
    assert len(frames) == 275 and [f.index for f in frames] == list(range(275))
    pts = [f.pts_ms for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # from the stream, increasing
    assert pts[-1] - pts[0] == pytest.approx(274 / 29.97 * 1000, abs=50)
    assert frames[0].image.shape == (360, 640, 3)


def test_truncated_and_damaged_streams_play_what_they_can(clip_ts: Path, tmp_path: Path) -> None:
    data = clip_ts.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    assert 100 < len(list(open_source("cut", str(cut)).frames(threading.Event()))) < 275
    damaged = bytearray(data)
    for offset in range(len(data) // 3, len(data) // 3 + 40_000, 997):
        damaged[offset : offset + 64] = b"\xff" * 64
    broken = tmp_path / "damaged.ts"
    broken.write_bytes(bytes(damaged))
    assert len(list(open_source("damaged", str(broken)).frames(threading.Event()))) > 200


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 1000])
def test_not_a_video(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(CorruptSourceError, match="not a decodable video"):
        list(open_source("x", str(path)).frames(threading.Event()))


def test_folder_of_images_skips_unreadable_files(faces_dir: Path, tmp_path: Path) -> None:
    for name in ("a.jpg", "c.jpg"):
        (tmp_path / name).write_bytes((faces_dir / "face_recognition/examples/two_people.jpg").read_bytes())
    (tmp_path / "b.jpg").write_bytes(b"broken")
    source = open_source("folder", str(tmp_path))
    assert isinstance(source, FolderSource)
    frames = list(source.frames(threading.Event()))
    assert [f.index for f in frames] == [0, 1] and source.corrupt_packets == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    raise AssertionError("http server did not start")


def test_live_stream_reconnects_after_a_drop_and_reports_the_gap(clip_ts: Path) -> None:
    port = free_port()
    server = http_server(clip_ts.parent, port)
    source = open_source("cam", f"http://127.0.0.1:{port}/{clip_ts.name}", reconnect_min_ms=200,
                         reconnect_max_ms=800, open_timeout_ms=2000)
    assert source.live
    stop = threading.Event()
    frames = source.frames(stop)
    try:
        first = [next(frames) for _ in range(275)]  # the whole file, then the server goes away
        server.terminate()
        server.wait()
        threading.Timer(1.5, lambda: restarted.append(http_server(clip_ts.parent, port))).start()
        restarted: list[subprocess.Popen[bytes]] = []
        after = next(frames)  # blocks through the failed attempts until the server is back
    finally:
        stop.set()
        server.kill()
    for process in restarted:
        process.kill()
    assert [f.index for f in first] == list(range(275))
    assert after.gap is not None and after.gap.seconds >= 1.0 and after.gap.frames_lost >= 20
    assert after.index == 275 + after.gap.frames_lost  # frame indices count the frames lost
    assert source.reconnects >= 1


def test_a_silent_live_source_is_reported_as_a_timeout(tmp_path: Path) -> None:
    """A server that accepts the connection and sends nothing: the error says it timed out
    (FFmpeg's own words were "Immediate exit requested"), without the password."""
    from stream_worker.local.sources import SourceUnavailableError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    source = open_source("cam", f"http://viewer:s3cret@127.0.0.1:{server.getsockname()[1]}/live", open_timeout_ms=1000)
    try:
        with pytest.raises(SourceUnavailableError, match=r"sent nothing within 1000 ms \(timed out") as failed:
            source._open()
        assert "Immediate exit" not in str(failed.value) and "s3cret" not in str(failed.value)
    finally:
        server.close()
        for connection in accepted:
            connection.close()


@pytest.mark.parametrize("container, options", [("matroska", {}), ("mp4", {"movflags": "faststart"}),
                                                ("mp4", {"movflags": "frag_keyframe+empty_moov"})])
def test_recordings_cut_in_half_play_up_to_the_cut(faces_dir: Path, tmp_path: Path, container: str,
                                                   options: dict[str, str]) -> None:
    """What recorders write and a crash cuts short: Matroska, MP4 with its index first, and
    fragmented MP4 play the decodable part (MPEG-TS: the test above)."""
    whole = remux(faces_dir / CLIP, tmp_path / f"clip.{container}", container, options)
    cut = tmp_path / f"cut.{container}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert 100 < len(list(open_source("cut", str(cut)).frames(threading.Event()))) < 275
