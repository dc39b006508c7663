"""An MP4 cut short before its index (moov) was written plays the frames it holds.

The shared clip keeps its index at the end, as MP4 writers do by default, and interleaves
AAC audio after every video frame; its encoder did not repeat the decoder's parameters in
the stream, so they come from a complete recording (the whole clip). Recordings made here
with x264 and x265 (mono audio, B-frames) repeat them, as most cameras do, and play alone.
Every recovered frame is compared with the frame the complete file gives.
"""

from __future__ import annotations

import json
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream_worker.cli.main import main
from stream_worker.local.recovery import MediaData, Walk, inband_parameters, mdat_without_index, nal_units
from stream_worker.local.sources import CorruptSourceError, VideoSource, open_source

CLIP = "face_recognition/examples/short_hamilton_clip.mp4"


def record(clip: Path, out: Path, codec: str, options: dict[str, str], frames: int = 150) -> Path:
    """The clip's first ``frames`` frames re-encoded by ``codec`` with mono AAC audio, in an
    MP4 with its index at the end."""
    rate = Fraction(30000, 1001)
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        video = dst.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
        video.options = options
        audio = dst.add_stream("aac", rate=22050, layout="mono")
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=22050)
        for n, frame in enumerate(src.decode(video=0)):
            if n == frames:
                break
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            picture.pts, picture.time_base = n, 1 / rate
            dst.mux(video.encode(picture))
        dst.mux(video.encode())
        src.seek(0)
        for sound in src.decode(audio=0):
            if sound.time is not None and sound.time > frames / rate:
                break
            for resampled in resampler.resample(sound):
                dst.mux(audio.encode(resampled))
        dst.mux(audio.encode())
    return out


@pytest.fixture(scope="module")
def recordings(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    return {
        "h264": record(faces_dir / CLIP, folder / "h264.mp4", "libx264",
                       {"preset": "veryfast", "x264-params": "repeat-headers=1:keyint=30"}),
        "hevc": record(faces_dir / CLIP, folder / "hevc.mp4", "libx265",
                       {"preset": "ultrafast", "x265-params": "repeat-headers=1:keyint=30:log-level=error"}),
    }


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def packets_before(path: Path, end: int) -> list[av.Packet]:
    """The video packets that lie wholly in the first ``end`` bytes."""
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size and p.pos is not None and p.pos + p.size <= end]


def cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def in_order(frames: list[np.ndarray], original: list[np.ndarray]) -> bool:
    """Each frame is one of the original's, in the original's order."""
    position = 0
    for frame in frames:
        while position < len(original) and not np.array_equal(frame, original[position]):
            position += 1
        if position == len(original):
            return False
        position += 1
    return True


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.95])
def test_the_shared_clip_cut_before_its_index_plays_with_a_reference(faces_dir: Path, tmp_path: Path,
                                                                     fraction: float) -> None:
    whole = faces_dir / CLIP
    part = cut(whole, fraction, tmp_path / "cut.mp4")
    source = open_source("cut", str(part), recovery_reference=whole)
    frames = list(source.frames(threading.Event()))
    expected = len(packets_before(whole, part.stat().st_size))
    assert expected > 40 and len(frames) == expected  # every frame whose data is there, no more
    original = decoded(whole)
    assert all(np.array_equal(f.image, o) for f, o in zip(frames, original))  # the same pictures, in order
    assert [f.index for f in frames] == list(range(expected)) and source.corrupt_packets == 0
    assert frames[-1].pts_ms == pytest.approx((expected - 1) * 1000 / 29.97, abs=1)


def test_without_repeated_parameters_or_a_reference_the_error_says_what_to_do(faces_dir: Path, tmp_path: Path) -> None:
    part = cut(faces_dir / CLIP, 0.5, tmp_path / "cut.mp4")
    with pytest.raises(CorruptSourceError, match=r"cut short before its index \(moov\).*did not repeat the decoder's "
                       r"parameters.*--recover-with FILE.*MPEG-TS"):
        list(open_source("cut", str(part)).frames(threading.Event()))


def test_a_reference_from_another_encoder_is_refused_not_played(faces_dir: Path, tmp_path: Path,
                                                                recordings: dict[str, Path]) -> None:
    """x264's parameters on the clip's frames decode to noise: refused before any frame is given out."""
    part = cut(faces_dir / CLIP, 0.5, tmp_path / "cut.mp4")
    source = open_source("cut", str(part), recovery_reference=recordings["h264"])
    given: list[object] = []
    with pytest.raises(CorruptSourceError, match="do not decode with the parameters of the recovery reference"):
        given.extend(source.frames(threading.Event()))
    assert given == []
    with pytest.raises(CorruptSourceError, match="recovery reference .* does not exist"):
        list(open_source("cut", str(part), recovery_reference=tmp_path / "none.mp4").frames(threading.Event()))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("fraction", [0.5, 0.8])
def test_recordings_that_repeat_their_parameters_play_alone(recordings: dict[str, Path], tmp_path: Path, codec: str,
                                                            fraction: float) -> None:
    whole = recordings[codec]
    part = cut(whole, fraction, tmp_path / "cut.mp4")
    source = open_source("cut", str(part))
    assert isinstance(source, VideoSource)
    frames = list(source.frames(threading.Event()))
    end = part.stat().st_size
    assert len(frames) == len(packets_before(whole, end)) > 60  # B-frames: a picture the cut goes through is left out
    assert in_order([f.image for f in frames], decoded(whole)) and source.corrupt_packets == 0
    assert frames[1].pts_ms == pytest.approx(1000 / 29.97, abs=0.1)  # the rate the parameter sets declare

    # Unit by unit: every slice of the whole packets is found, and no audio passes for video.
    data = part.read_bytes()
    media = mdat_without_index(part)
    assert media is not None
    parameters = inband_parameters(data, media)
    assert parameters is not None and parameters.rules.codec == codec
    walk = Walk()
    found = set(nal_units(data, MediaData(parameters.first_unit, media.end), parameters.rules, walk))
    truth, straddling = set(), set()
    with av.open(str(whole)) as container:
        for packet in container.demux(video=0):
            if not packet.size or packet.pos is None or packet.pos >= end:
                continue
            body, position = bytes(packet), 0
            while position < len(body):
                length = int.from_bytes(body[position : position + 4], "big")
                if packet.pos + position >= parameters.first_unit:
                    (truth if packet.pos + packet.size <= end else straddling).add((packet.pos + position + 4, length))
                position += 4 + length
    assert not found - truth - straddling  # nothing that is not video
    slices = {(o, n) for o, n in truth if (data[o] & 0x1F if codec == "h264" else data[o] >> 1 & 0x3F) in
              ({1, 5} if codec == "h264" else set(range(22)))}
    assert slices and slices <= found  # every slice of every whole frame
    assert walk.skipped_bytes > 5_000  # (the audio between them)


def test_damage_inside_a_cut_recording_is_skipped(recordings: dict[str, Path], tmp_path: Path) -> None:
    whole = recordings["hevc"]
    data = bytearray(whole.read_bytes()[: int(whole.stat().st_size * 0.95)])
    middle = len(data) * 2 // 5
    data[middle : middle + 3000] = bytes(range(256)) * 11 + bytes(184)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    frames = list(open_source("damaged", str(damaged)).frames(threading.Event()))
    original = decoded(whole)
    intact = sum(any(np.array_equal(f.image, o) for o in original) for f in frames)
    total = len(packets_before(whole, len(data)))
    assert total - 30 < len(frames) < total and intact >= len(frames) - 30  # at most the damaged key-frame interval


def test_recover_with_is_a_setting_and_checked_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference = tmp_path / "ref.mp4"
    reference.write_bytes(b"x")
    assert main(["run", "--source", "x.mp4", "--recover-with", str(reference), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["stream"]["recovery_reference"] == str(reference)
    assert main(["run", "--source", "x.mp4", "--recover-with", str(tmp_path / "none.mp4"),
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "stream.recovery_reference (--recover-with): no such file" in capsys.readouterr().err
