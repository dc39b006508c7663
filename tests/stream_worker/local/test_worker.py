"""The worker's own behaviour: pacing, control file, metrics and health, the run command."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np

from engines.store.model_store import ModelStore
from gallery.sightings import SightingsStore
from stream_worker.config import StreamConfig
from stream_worker.local.sinks import JsonLinesSink
from stream_worker.local.sources import open_source
from stream_worker.local.worker import Worker
from stream_worker.messages.results import schema_for
from stream_worker.metrics import WorkerMetrics, serve
from stream_worker.pipeline.face_pipeline import FacePipeline
from stream_worker.pipeline.frames import Frame, now_utc
from tests.stream_worker.cli.test_cli import run

CLIP = "face_recognition/examples/short_hamilton_clip.mp4"


class FastLiveSource:
    """A live source that decodes far faster than the pipeline: frames of a real clip,
    produced as fast as possible (the thing under test is the worker's pacing)."""

    live = True
    corrupt_packets = 0

    def __init__(self, stream_id: str, frames: list[np.ndarray]) -> None:
        self.stream_id, self.uri, self.frames_list = stream_id, "test://fast", frames

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for index, image in enumerate(self.frames_list):
            if stop.is_set():
                return
            yield Frame(self.stream_id, index, index * 33.3, image, now_utc())


def decoded(faces_dir: Path, count: int) -> list[np.ndarray]:
    out = []
    for frame in open_source("x", str(faces_dir / CLIP)).frames(threading.Event()):
        out.append(frame.image)
        if len(out) == count:
            break
    return out


def test_realtime_pacing_drops_and_reports_gaps(detector, multitask, faces_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = decoded(faces_dir, 120)
    worker = Worker(FacePipeline(detector, multitask, None), [JsonLinesSink(tmp_path / "out.jsonl")],
                    StreamConfig(queue_frames=2), source_factory=lambda sid, uri, **_: FastLiveSource(sid, images))
    worker.add_stream("live", "test://fast")
    summary = worker.run()
    stats = summary.streams["live"]
    assert stats["frames_decoded"] == 120
    assert stats["frames_dropped"] > 0 and stats["frames_processed"] + stats["frames_dropped"] == 120
    frames = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()
              if '"facestream.frame/2"' in line]
    lost = sum(f.get("gap", {}).get("frames_lost", 0) for f in frames)
    assert lost == stats["frames_dropped"]  # every dropped frame is accounted for in the output
    assert all(b["frame_index"] > a["frame_index"] for a, b in zip(frames, frames[1:]))


def test_control_file_adds_and_removes_streams(detector, multitask, short_clip: tuple[Path, int],  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    control = tmp_path / "control.txt"
    control.write_text("")
    worker = Worker(FacePipeline(detector, multitask, None), [JsonLinesSink(tmp_path / "out.jsonl")])
    stop = threading.Event()
    thread = threading.Thread(target=lambda: worker.run(control_file=control, stop=stop))
    thread.start()
    clip, frames = short_clip
    control.write_text(f"add clip {clip}\nadd cam rtsp://127.0.0.1:9/x\nbogus line\n")
    deadline = time.monotonic() + 60
    while "clip" not in worker.finished and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cam" in worker.runners
    with control.open("a") as f:
        f.write("remove cam\n")
    while "cam" not in worker.finished and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=30)
    assert worker.finished["clip"]["frames_processed"] == frames and "cam" in worker.finished


def test_metrics_and_health_endpoints() -> None:
    metrics = WorkerMetrics()
    metrics.frames_processed.labels("cam1").inc(3)
    server = serve(metrics, lambda: {"status": "ok", "streams": {"cam1": {}}}, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'facestream_frames_processed_total{stream="cam1"} 3.0' in text
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
        assert health["status"] == "ok"
    finally:
        server.shutdown()


def test_run_command(model_store: ModelStore, short_clip: tuple[Path, int], tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("pipeline:\n  detect_every_frames: 4\n")
    printed = run(["run", "--source", "x.mp4", "--config", str(config), "--print-config"], model_store.home)
    assert json.loads(printed.stdout)["pipeline"]["detect_every_frames"] == 4
    out = tmp_path / "results.jsonl"
    clip, frames = short_clip
    result = run(["run", "--source", f"clip={clip}", "--source", str(tmp_path / "missing.mp4"),
                  "--out", str(out), "--thumbnails", str(tmp_path / "thumbs"), "--device", "cpu",
                  "--sightings", str(tmp_path / "sightings"), "--recorded-at", "clip=2026-11-28T10:00:00Z"],
                 model_store.home)
    assert result.returncode == 1  # one stream failed; the other was processed whole
    summary = json.loads(result.stderr.strip().splitlines()[-1])["summary"]
    assert summary["streams"]["clip"]["frames_processed"] == frames
    assert "no such file" in summary["streams"]["missing"]["error"]
    assert summary["engine"]["device"] == "cpu" and set(summary["stage_ms_per_frame"]) == {
        "detect", "analyze", "track", "identify"}
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    for message in messages:
        jsonschema.validate(message, schema_for(message["schema"]))
    assert len(list((tmp_path / "thumbs" / "clip").glob("track-*.jpg"))) == summary["tracks"]
    # --sightings: every ended track stored (placed at --recorded-at + pts) or counted as left out
    counts = summary["sightings"]
    assert counts["stored"] + counts["too_short"] + counts["too_poor"] == summary["tracks"]
    with SightingsStore(tmp_path / "sightings", create=False) as sightings:
        assert sightings.count() == counts["stored"] and [d.isoformat() for d in sightings.days()] == ["2026-11-28"]
