"""Kafka in and out, against a real broker (Tansu, Kafka protocol): end to end, a killed
worker, a frozen broker, malformed input, two workers in a group, the gallery changelog."""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from engines.errors import InvalidImageError
from gallery.gallery import Gallery
from stream_worker.config import KafkaConfig, env_name
from stream_worker.kafka.changelog import GalleryPublisher
from stream_worker.kafka.client import ensure_topics, make_producer
from stream_worker.kafka.produce import publish_frames
from stream_worker.kafka.tail import tail_topic
from stream_worker.kafka.wire import (
    DEAD_LETTER_KINDS,
    FrameMessage,
    header_dict,
    thumbnail_reference,
)
from stream_worker.kafka.worker import KafkaWorker, KafkaWorkerOptions
from stream_worker.messages.results import schema_for
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FacePipeline
from stream_worker.pipeline.frames import Frame
from tests.stream_worker.kafka.kafka_broker import TansuBroker, free_port, read_topic

EXAMPLES = "face_recognition/examples"
CLIP = f"{EXAMPLES}/short_hamilton_clip.mp4"
LIN = "Lin-Manuel Miranda"
ALEX = "Alex Lacamoire"
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 10000}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    with TansuBroker(tmp_path_factory.mktemp("tansu") / "broker.log") as running:
        yield running


def kafka_config(broker: TansuBroker, name: str, **extra: Any) -> KafkaConfig:
    """Topics and group of one test, so tests sharing the broker do not see each other."""
    topics = {f"{kind}_topic": f"{name}.{kind}" for kind in
              ("frames", "detections", "tracks", "alerts", "dead_letter", "thumbnails", "gallery", "state",
               "embeddings")}
    return KafkaConfig(bootstrap_servers=broker.bootstrap, group_id=f"{name}-group", **{**topics, **FAST_GROUP, **extra})


def env_for(config: KafkaConfig) -> dict[str, str]:
    values = config.model_dump(mode="json", exclude={"sasl_password"})
    return {env_name(("kafka", key)): json.dumps(v) if isinstance(v, bool) else str(v) for key, v in values.items()}


def publish(config: KafkaConfig, frames: list[Frame], fmt: str = "jpeg", **options: Any) -> None:
    producer = make_producer(config)
    try:
        publish_frames(producer, config.frames_topic, frames, fmt=fmt, fps=29.97, **options)
    finally:
        producer.close()


def messages(broker: TansuBroker, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in read_topic(broker.bootstrap, topic)]


def run_in_process(config: KafkaConfig, detector, multitask, gallery: Gallery | None,  # type: ignore[no-untyped-def]
                   metrics: WorkerMetrics | None = None) -> Any:
    # best shots referred to on the thumbnails topic, as `facestream consume` does
    pipeline = FacePipeline(detector, multitask, gallery,
                            thumbnail_ref=functools.partial(thumbnail_reference, config.thumbnails_topic))
    worker = KafkaWorker(pipeline, config, KafkaWorkerOptions(idle_exit_ms=4000), gallery=gallery, metrics=metrics)
    return worker.run()


class WorkerProcess:
    """``facestream consume`` in its own process (so it can be killed)."""

    def __init__(self, config: KafkaConfig, home: Path, log: Path, *, gallery: Path | None = None,
                 idle_exit_ms: int = 0, metrics_port: int = 0) -> None:
        args = [sys.executable, "-m", "stream_worker.cli", "-v", "consume", "--idle-exit-ms", str(idle_exit_ms)]
        if gallery is not None:
            args += ["--gallery", str(gallery)]
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        env = {**os.environ, **env_for(config), "FACESTREAM__MODELS__HOME": str(home), "FACESTREAM__MODELS__AUTO_FETCH": "0",
               "FACESTREAM__RUNTIME__DEVICE": "cpu"}
        self.log = log
        self.metrics_port = metrics_port
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=2) as response:
            return dict(json.loads(response.read()))

    def wait(self, timeout_s: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the worker did not finish in {timeout_s} s; log:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, worker: WorkerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        log = f"; worker log:\n{worker.log.read_text()[-3000:]}" if worker is not None else ""
        if worker is not None and worker.process.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.process.returncode}) while waiting for {what}{log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{log}")
        time.sleep(0.5)


def frame_ids(broker: TansuBroker, topic: str) -> collections.Counter[str]:
    return collections.Counter(m["event_id"] for m in messages(broker, topic))


def named_frames(records: list[dict[str, Any]]) -> dict[int, set[str]]:
    return {m["frame_index"]: {f["identity"]["name"] for f in m["faces"] if f["identity"]}
            for m in records if m["schema"] == "facestream.frame/2"}


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_run(detector, multitask, hamilton_gallery: Gallery, hamilton_frames: list[Frame]) -> dict[int, set[str]]:  # type: ignore[no-untyped-def]
    """Who is named on each frame when the clip is read from the file."""
    pipeline = FacePipeline(detector, multitask, hamilton_gallery)
    return named_frames([output.result.to_json() for frame in hamilton_frames for output in pipeline.process([frame])])


@pytest.mark.parametrize("fmt", ["jpeg", "h264"])
def test_end_to_end_every_frame_has_a_result_and_identities_match_the_file_run(  # type: ignore[no-untyped-def]
    broker: TansuBroker, detector, multitask, hamilton_gallery: Gallery, hamilton_frames: list[Frame],
    file_run: dict[int, set[str]], tmp_path: Path, fmt: str,
) -> None:
    # small polls and a short interval: many checkpoints, so that several refer to one best shot
    config = kafka_config(broker, f"e2e-{fmt}", checkpoint_interval_ms=200, max_poll_records=8, max_poll_frames=8)
    ensure_topics(config)
    publisher = GalleryPublisher(make_producer(config), config.gallery_topic)
    for identity in ("lin", "alex"):
        publisher.publish_identity(hamilton_gallery, identity)
    publish(config, hamilton_frames, fmt)
    gallery = Gallery(tmp_path / "worker.db")  # empty: filled from the changelog
    stats = run_in_process(config, detector, multitask, gallery)
    assert stats.frames == len(hamilton_frames) and stats.dead_letters == 0

    results = read_topic(broker.bootstrap, config.detections_topic)
    frames = [json.loads(r.value) for r in results]
    assert sorted(m["frame_index"] for m in frames) == list(range(len(hamilton_frames)))
    for record, message in zip(results, frames):
        jsonschema.validate(message, schema_for(message["schema"]))
        headers = header_dict(record.headers)
        assert record.key == b"hamilton" and headers["fs-event-id"] == message["event_id"]
        assert headers["fs-schema"] == message["schema"] == "facestream.frame/2"
    tracks = messages(broker, config.tracks_topic)
    for message in tracks:
        jsonschema.validate(message, schema_for(message["schema"]))
    kafka_run = named_frames(frames)
    assert {n for names in kafka_run.values() for n in names} == {n for names in file_run.values() for n in names} \
        == {LIN, ALEX}
    agree = sum(kafka_run[i] == file_run[i] for i in file_run)
    assert agree >= 0.95 * len(file_run), f"only {agree}/{len(file_run)} frames name the same people"
    alerts = messages(broker, config.alerts_topic)
    assert alerts and all(a["type"] == "track_identified" for a in alerts)
    assert {a["identity"]["name"] for a in alerts} == {LIN, ALEX}
    ended = [t for t in tracks if t["type"] == "track_ended"]
    assert len(ended) == len([t for t in tracks if t["type"] == "track_started"])
    # every ended track's best shot is on the thumbnails topic, under the summary's reference
    shots = read_topic(broker.bootstrap, config.thumbnails_topic)
    by_reference = {f"kafka:{config.thumbnails_topic}/{r.key.decode()}": r for r in shots}
    assert len(by_reference) == len(shots) == len(ended)
    for track in ended:
        shot = by_reference[track["summary"]["best_shot"]["thumbnail"]]
        headers = header_dict(shot.headers)
        assert (headers["content-type"], headers["fs-track-id"]) == ("image/jpeg", str(track["track_id"]))
        side = max(cv2.imdecode(np.frombuffer(shot.value, np.uint8), cv2.IMREAD_COLOR).shape[:2])
        assert 0 < side <= 160  # the configured thumbnail size (smaller faces are not enlarged)
    out = io.StringIO()
    assert tail_topic(config, config.thumbnails_topic, out, idle_exit_ms=2000) == (len(shots), 0)
    assert {json.loads(line)["key"] for line in out.getvalue().splitlines()} == {r.key.decode() for r in shots}
    checkpoints, best_shots = state_topic(broker, config)
    referred = collections.Counter(track["best"]["jpeg_ref"].encode() for c in checkpoints
                                   for stream in json.loads(c.value)["streams"].values() if stream
                                   for track in stream.get("tracks", []) if track["best"])
    assert set(referred) == set(best_shots) and max(referred.values()) >= 2  # checkpoints refer to shots...
    assert all(writes == 1 for writes, _ in best_shots.values())  # ...written once each
    assert all(gone for _, gone in best_shots.values())  # and tombstoned once the worker left


def state_topic(broker: TansuBroker, config: KafkaConfig) -> tuple[list[Any], dict[bytes, tuple[int, bool]]]:
    """The state topic: its checkpoint messages, and per best-shot key how many times its
    JPEG was written and whether it ends tombstoned."""
    records = read_topic(broker.bootstrap, config.state_topic)
    checkpoints = [r for r in records if b"/shot/" not in r.key and r.value is not None]
    writes: dict[bytes, list[bytes | None]] = {}
    for r in records:
        if b"/shot/" in r.key:
            writes.setdefault(r.key, []).append(r.value)
    return checkpoints, {k: (sum(v is not None for v in w), w[-1] is None) for k, w in writes.items()}


# --- at least once ------------------------------------------------------------------------------


def _by_event(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Messages by event id, checking that duplicates are identical copies."""
    out: dict[str, dict[str, Any]] = {}
    for message in records:
        previous = out.setdefault(message["event_id"], message)
        assert previous == message, f"duplicate {message['event_id']} differs from its first copy"
    return out


def test_killed_worker_replays_and_deduplicated_results_equal_a_clean_run(  # type: ignore[no-untyped-def]
    broker: TansuBroker, model_store, hamilton_gallery: Gallery, hamilton_frames: list[Frame], tmp_path: Path,
) -> None:
    frames_config = kafka_config(broker, "crash")
    ensure_topics(frames_config)
    publisher = GalleryPublisher(make_producer(frames_config), frames_config.gallery_topic)
    publisher.publish_identity(hamilton_gallery, "lin")
    publish(frames_config, hamilton_frames)

    def results_config(name: str) -> KafkaConfig:
        return KafkaConfig(**{**vars(frames_config), "group_id": name, "detections_topic": f"{name}.detections",
                              "tracks_topic": f"{name}.tracks", "alerts_topic": f"{name}.alerts",
                              "thumbnails_topic": f"{name}.thumbnails", "state_topic": f"{name}.state"})

    clean, crashed = results_config("clean"), results_config("crashed")
    clean_worker = WorkerProcess(clean, model_store.home, tmp_path / "clean.log", idle_exit_ms=4000)
    first = WorkerProcess(crashed, model_store.home, tmp_path / "crashed-1.log")
    wait_for(lambda: len(read_topic(broker.bootstrap, crashed.detections_topic)) >= 130, 120,
             "the first worker to publish 130 frames", first)
    first.kill()
    killed_at = len(read_topic(broker.bootstrap, crashed.detections_topic))
    assert killed_at < len(hamilton_frames), "the worker finished before it was killed"
    second = WorkerProcess(crashed, model_store.home, tmp_path / "crashed-2.log", idle_exit_ms=4000)
    assert second.wait(180) == 0, second.log.read_text()[-3000:]
    assert clean_worker.wait(180) == 0, clean_worker.log.read_text()[-3000:]
    assert "resumed at offset" in second.log.read_text()

    for kind in ("detections", "tracks"):
        clean_messages = messages(broker, f"clean.{kind}")
        # the runs publish best shots to topics of their own, so the references name them
        crashed_messages = [json.loads(json.dumps(m).replace("kafka:crashed.thumbnails/", "kafka:clean.thumbnails/"))
                            for m in messages(broker, f"crashed.{kind}")]
        clean_events, crashed_events = _by_event(clean_messages), _by_event(crashed_messages)
        assert crashed_events == clean_events, f"{kind}: after de-duplication the results differ from a clean run"
    best_shots = {}  # the best shots too, byte for byte: a take-over restores them from the state topic
    for name in ("clean", "crashed"):
        best_shots[name] = {}
        for record in read_topic(broker.bootstrap, f"{name}.thumbnails"):
            assert best_shots[name].setdefault(record.key, record.value) == record.value
    assert best_shots["crashed"] == best_shots["clean"] and best_shots["clean"]
    _, kept = state_topic(broker, crashed)  # the second worker removed what the killed one left
    assert kept and all(gone for _, gone in kept.values())
    frames = messages(broker, crashed.detections_topic)
    assert {m["frame_index"] for m in frames} == set(range(len(hamilton_frames)))
    # Exactly what the killed worker published after its last checkpoint was replayed: the
    # second worker resumed at that checkpoint's offset (one frame per message, from 0).
    [resumed_at] = [int(n) for n in re.findall(r"resumed at offset (\d+)", second.log.read_text())]
    assert 0 < resumed_at <= killed_at
    assert len(frames) - len(hamilton_frames) == killed_at - resumed_at
    assert any(m["type"] == "track_identified" for m in messages(broker, crashed.tracks_topic))


def test_broker_outage_longer_than_the_session_loses_nothing(  # type: ignore[no-untyped-def]
    broker: TansuBroker, model_store, hamilton_frames: list[Frame], tmp_path: Path,
) -> None:
    # Requests time out during the outage (request_timeout_ms < its length), so the clients
    # must reconnect, and the coordinator must see the member again.
    config = kafka_config(broker, "outage", gallery_topic="", request_timeout_ms=7000)
    ensure_topics(config)
    worker = WorkerProcess(config, model_store.home, tmp_path / "worker.log", metrics_port=free_port())
    wait_for(lambda: _healthy(worker) and bool(worker.health()["partitions"]), 60, "the worker to join", worker)
    frames = hamilton_frames[:200]
    publisher = threading.Thread(target=publish, args=(config, frames), kwargs={"realtime": True})
    publisher.start()
    wait_for(lambda: len(read_topic(broker.bootstrap, config.detections_topic)) >= 30, 60, "30 results", worker)
    broker.freeze()
    try:
        time.sleep(config.request_timeout_ms / 1000 + 5)
        assert worker.process.poll() is None, "the worker died during the outage"
        assert worker.health()["status"] == "ok"  # waiting out an outage is not a stall: no restart
    finally:
        broker.resume()
    publisher.join(timeout=120)
    wait_for(lambda: set(frame_ids(broker, config.detections_topic)) >= {f"hamilton:{f.index}" for f in frames},
             120, "a result for every frame after the outage", worker)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.log.read_text()[-3000:]
    assert "timed out" in worker.log.read_text(), "the outage was not felt by the worker"


def test_health_tells_a_stalled_poll_loop_from_a_starting_or_turning_one(detector, multitask) -> None:  # type: ignore[no-untyped-def]
    """What a liveness probe sees (deploy/kubernetes): 503 before the poll loop's first turn
    and once it has not turned for delivery_timeout_ms + max_poll_interval_ms (the longest a
    healthy loop blocks: a flush through a broker outage, then a poll's work), 200 between."""
    from stream_worker.metrics import serve

    config = KafkaConfig(max_poll_interval_ms=10_000, delivery_timeout_ms=20_000, request_timeout_ms=5_000)
    worker = KafkaWorker(FacePipeline(detector, multitask, None), config)
    server = serve(WorkerMetrics(), worker.health, "127.0.0.1", 0)

    def probe() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/health", timeout=5) as response:
                return response.status, json.loads(response.read())["status"]
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["status"]

    try:
        assert probe() == (503, "starting")
        worker._last_loop = time.monotonic() - 29
        assert probe() == (200, "ok")
        worker._last_loop = time.monotonic() - 31
        assert probe() == (503, "stalled")
        worker._last_loop = time.monotonic()
        worker._failing = "pipeline on hamilton frame 3: RuntimeError: CUDA error"
        assert probe() == (503, "failing")  # retrying a fault that is not the input's: unhealthy
    finally:
        server.shutdown()


def _healthy(worker: WorkerProcess) -> bool:
    try:
        worker.health()
        return True
    except OSError:
        return False


# --- faults that are not the input's, and input that is ------------------------------------------


class FailingGpu:
    """The multi-task network on a device that starts failing at its ``start_at``-th call and
    recovers ``duration_s`` later (what an out-of-memory GPU or a crashed driver looks like)."""

    def __init__(self, inner: Any, start_at: int, duration_s: float) -> None:
        self.inner, self.start_at, self.duration_s = inner, start_at, duration_s
        self.profile = inner.profile
        self.calls = self.failures = 0
        self.since: float | None = None

    def analyze(self, images: Any, faces: Any, **options: Any) -> Any:
        self.calls += 1
        if self.calls == self.start_at:
            self.since = time.monotonic()
        if self.since is not None and time.monotonic() - self.since < self.duration_s:
            self.failures += 1
            raise RuntimeError("CUDA error: out of memory")
        return self.inner.analyze(images, faces, **options)


POISON = 37


class PoisonedPipeline(FacePipeline):
    """The pipeline, refusing frame 37 as bad input (skippable), as it would a frame it cannot use."""

    def _step(self, frames: Any) -> Any:
        if any(f.index == POISON for f in frames):
            raise InvalidImageError(f"frame {POISON}: unusable picture")
        return super()._step(frames)


def test_a_fault_that_is_not_the_inputs_dead_letters_nothing_and_every_frame_gets_its_result(  # type: ignore[no-untyped-def]
    broker: TansuBroker, detector, multitask, hamilton_frames: list[Frame],
) -> None:
    """A GPU fault mid-stream sends no good frame to the dead-letter topic and commits nothing
    past it: the worker turns unhealthy, goes back to its checkpoint and retries until the
    fault clears; then every frame has its result, identical to a run without the fault. A
    poison frame among the good ones (the input's fault) is the one dead letter."""
    frames = hamilton_frames[:100]
    base = kafka_config(broker, "fault", gallery_topic="")
    ensure_topics(base)
    publish(base, frames)

    def results_config(name: str) -> KafkaConfig:
        return base.model_copy(update={"group_id": name, "detections_topic": f"{name}.detections",
                                       "tracks_topic": f"{name}.tracks", "alerts_topic": f"{name}.alerts",
                                       "thumbnails_topic": f"{name}.thumbnails", "state_topic": f"{name}.state",
                                       "dead_letter_topic": f"{name}.dead-letter"})

    def run(config: KafkaConfig, network: Any, metrics: WorkerMetrics | None = None,
            statuses: list[str] | None = None) -> Any:
        pipeline = PoisonedPipeline(detector, network, None,
                                    thumbnail_ref=functools.partial(thumbnail_reference, config.thumbnails_topic))
        worker = KafkaWorker(pipeline, config, KafkaWorkerOptions(idle_exit_ms=3000), metrics=metrics)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                if statuses is not None:
                    statuses.append(worker.health()["status"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            return worker.run()
        finally:
            done.set()
            watcher.join()

    clean, faulty = results_config("fault-clean"), results_config("fault-gpu")
    clean_stats = run(clean, multitask)
    gpu = FailingGpu(multitask, start_at=60, duration_s=3.0)
    metrics, statuses = WorkerMetrics(), []
    stats = run(faulty, gpu, metrics, statuses)

    assert gpu.failures >= 3 and stats.failures == gpu.failures and stats.rewinds >= gpu.failures
    assert "failing" in statuses and statuses[-1] == "ok"
    assert metric_total(metrics, "facestream_failures") == gpu.failures
    for config, run_stats in ((clean, clean_stats), (faulty, stats)):
        letters = read_topic(broker.bootstrap, config.dead_letter_topic)
        assert letters and len(letters) == run_stats.dead_letters  # (again after a rewind: at least once)
        for letter in letters:  # the poison frame, and no good frame
            headers = header_dict(letter.headers)
            assert (headers["fs-dlq-kind"], headers["fs-frame-index"]) == ("pipeline", str(POISON))
            assert "unusable picture" in headers["fs-dlq-reason"]
        results = {m["frame_index"] for m in messages(broker, config.detections_topic)}
        assert results == {f.index for f in frames} - {POISON}
    assert clean_stats.dead_letters == 1
    for kind in ("detections", "tracks"):  # replays are exact: after de-duplication, the clean run's messages
        replayed = [json.loads(json.dumps(m).replace("kafka:fault-gpu.", "kafka:fault-clean."))
                    for m in messages(broker, f"fault-gpu.{kind}")]
        assert _by_event(replayed) == _by_event(messages(broker, f"fault-clean.{kind}"))


def metric_total(metrics: WorkerMetrics, name: str) -> float:
    return sum(s.value for m in metrics.registry.collect() if m.name == name for s in m.samples
               if s.name.endswith("_total"))


# --- malformed input -------------------------------------------------------------------------------


MALFORMED_KINDS = ("decode", "decode", "header", "header", "content-type", "oversized", "decode", "decode", "key",
                   "payload")
"""The dead-letter kind each of malformed_messages' ten kinds must be given, in order."""


def malformed_messages(good_jpeg: bytes, h264_chunk: bytes, limit: int) -> list[tuple[bytes | None, bytes | None, list]]:  # type: ignore[type-arg]
    """1,000 broken messages of ten kinds (key, value, headers), message i of kind i % 10."""
    rng = np.random.default_rng(7)
    good = FrameMessage("hamilton", "image/jpeg", 10_000, 1)
    kinds: list[Callable[[int], tuple[bytes | None, bytes | None, list]]] = [  # type: ignore[type-arg]
        lambda i: (b"hamilton", rng.bytes(2000), good.headers()),  # not an image
        lambda i: (b"hamilton", good_jpeg[: len(good_jpeg) // 50], good.headers()),  # truncated
        lambda i: (b"hamilton", good_jpeg, []),  # no headers
        lambda i: (b"hamilton", good_jpeg, [h for h in good.headers() if h[0] != "fs-frame-index"]),
        lambda i: (b"hamilton", good_jpeg, [("content-type", b"image/gif"), *good.headers()[1:]]),
        lambda i: (b"hamilton", rng.bytes(limit + 1000), good.headers()),  # oversized
        lambda i: (b"hamilton", b"\x00\x00\x00\x01" + rng.bytes(3000),
                   FrameMessage("hamilton", "video/h264", 10_000, 1, None, 30.0).headers()),  # broken chunk
        lambda i: (b"hamilton", h264_chunk[len(h264_chunk) // 2:],
                   FrameMessage("hamilton", "video/h264", 10_000, 1, None, 30.0).headers()),  # a chunk's tail
        lambda i: (b"someone-else", good_jpeg, good.headers()),  # key and stream id disagree
        lambda i: (b"hamilton", None, good.headers()),  # no payload
    ]
    return [kinds[i % len(kinds)](i) for i in range(1000)]


def test_malformed_messages_go_to_the_dead_letter_topic_and_good_frames_are_all_processed(  # type: ignore[no-untyped-def]
    broker: TansuBroker, detector, multitask, hamilton_frames: list[Frame],
) -> None:
    limit = 200_000
    config = kafka_config(broker, "malformed", gallery_topic="", max_message_bytes=limit)
    ensure_topics(config)
    good = hamilton_frames[:60]
    jpeg = cv2.imencode(".jpg", good[0].image)[1].tobytes()
    producer = make_producer(KafkaConfig(**{**vars(config), "max_message_bytes": 4 * limit}))
    from stream_worker.kafka.produce import H264Chunker

    chunker = H264Chunker(640, 360, 30.0, 10)
    chunk = ([c for f in good[:12] for c in chunker.add(f)] + chunker.finish())[0][1]
    bad = malformed_messages(jpeg, chunk, limit)
    for k, frame in enumerate(good):  # good frames with broken messages between them, on the same partition
        encoded = cv2.imencode(".jpg", frame.image)[1]
        producer.send(config.frames_topic, key=b"hamilton", value=encoded.tobytes(),
                      headers=FrameMessage("hamilton", "image/jpeg", frame.index, 1_764_000_000_000 + k).headers())
        for key, value, headers in bad[k * len(bad) // len(good): (k + 1) * len(bad) // len(good)]:
            producer.send(config.frames_topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()

    metrics = WorkerMetrics()
    stats = run_in_process(config, detector, multitask, None, metrics)
    assert stats.dead_letters == 1000 and stats.frames == len(good)
    counted = {s.labels["reason"]: s.value for m in metrics.registry.collect() if m.name == "facestream_dead_letters"
               for s in m.samples if s.name.endswith("_total")}
    expected = collections.Counter(MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(1000))
    assert {k: v for k, v in counted.items() if v} == expected
    assert set(counted) == set(DEAD_LETTER_KINDS)  # every kind exported from the start, at 0 if none
    assert sorted(m["frame_index"] for m in messages(broker, config.detections_topic)) == [f.index for f in good]
    letters = read_topic(broker.bootstrap, config.dead_letter_topic, timeout_s=30)
    assert len(letters) == 1000
    originals = {(k, v) for k, v, _ in bad}
    reasons, kinds = collections.Counter(), collections.Counter()
    for letter in letters:
        headers = header_dict(letter.headers)
        assert headers["fs-dlq-reason"] and headers["fs-dlq-topic"] == config.frames_topic
        kinds[headers["fs-dlq-kind"]] += 1
        reasons[headers["fs-dlq-reason"].split(":")[0].split(" (")[0][:40]] += 1
        if "fs-dlq-original-bytes" in headers:
            assert int(headers["fs-dlq-original-bytes"]) == limit + 1000 and len(letter.value) == limit
        else:
            assert (letter.key, letter.value) in originals or (letter.value == b"" and (letter.key, None) in originals)
    assert len(reasons) >= 8, reasons
    assert kinds == expected


# --- two workers in a group -------------------------------------------------------------------------


def cameras_on_every_partition(partitions: int) -> list[str]:
    from kafka.partitioner.default import murmur2

    chosen: dict[int, str] = {}
    for n in range(1000):
        name = f"cam-{n}"
        chosen.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, name)
        if len(chosen) == partitions:
            return [chosen[p] for p in range(partitions)]
    raise AssertionError("no camera names cover every partition")


def test_two_workers_share_cameras_one_takes_over_a_frozen_one_which_then_finds_its_partitions_lost(  # type: ignore[no-untyped-def]
    broker: TansuBroker, model_store, hamilton_frames: list[Frame], tmp_path: Path,
) -> None:
    config = kafka_config(broker, "group", gallery_topic="", frames_partitions=4)
    ensure_topics(config)
    cameras = cameras_on_every_partition(4)
    a = WorkerProcess(config, model_store.home, tmp_path / "a.log", metrics_port=free_port())
    b = WorkerProcess(config, model_store.home, tmp_path / "b.log", metrics_port=free_port())
    try:
        def split() -> bool:
            if not (_healthy(a) and _healthy(b)):
                return False
            mine, theirs = set(a.health()["partitions"]), set(b.health()["partitions"])
            return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == {0, 1, 2, 3}

        wait_for(split, 90, "both workers to own partitions", a)
        owner_b = set(b.health()["partitions"])

        def camera_frames(start: int, count: int) -> list[Frame]:
            return [Frame(cam, f.index, f.pts_ms, f.image, f.received)
                    for cam in cameras for f in hamilton_frames[start:start + count]]

        first = camera_frames(0, 40)
        publish(config, first)
        expected = {f"{f.stream_id}:{f.index}" for f in first}
        wait_for(lambda: set(frame_ids(broker, config.detections_topic)) >= expected, 120, "phase 1 results", a)
        time.sleep(2.5)  # let both checkpoint
        counts = frame_ids(broker, config.detections_topic)
        assert counts == collections.Counter(expected), "a frame was processed twice in one generation"
        assert a.health()["frames"] > 0 and b.health()["frames"] > 0
        for worker in (a, b):  # caught up: no lag on any owned partition, in /health and in /metrics
            health = worker.health()
            assert health["lag"] and {int(p) for p in health["lag"]} <= set(health["partitions"])
            assert set(health["lag"].values()) == {0}
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=2) as response:
                assert "facestream_kafka_lag_messages{partition=" in response.read().decode()

        b.freeze()  # past its session: the group evicts it, and A takes its cameras from B's checkpoints
        wait_for(lambda: set(a.health()["partitions"]) == {0, 1, 2, 3}, 60, "worker A to take over", a)
        second = camera_frames(40, 40)
        publish(config, second)
        expected |= {f"{f.stream_id}:{f.index}" for f in second}
        wait_for(lambda: set(frame_ids(broker, config.detections_topic)) >= expected, 120, "phase 2 results", a)
        counts = frame_ids(broker, config.detections_topic)
        assert counts == collections.Counter(expected), "after the take-over a frame was processed twice"
        taken = [cameras[p] for p in sorted(owner_b)]
        tracks = messages(broker, config.tracks_topic)
        for cam in taken:  # A continued B's tracks from B's checkpoint: no track id is started twice
            started = [t["track_id"] for t in tracks if t["stream_id"] == cam and t["type"] == "track_started"]
            assert len(started) == len(set(started))

        # B wakes up, still holding fetched phase-2 records: it may process them before it learns
        # it was evicted (Kafka fences only its commits), so they can be published twice, but
        # as the same messages.
        b.thaw()
        wait_for(lambda: "lost" in b.log.read_text(), 60, "worker B to find its partitions lost", b)
        wait_for(split, 90, "the group to share the partitions again", a)
        for worker in (a, b):
            worker.process.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0
        assert set(frame_ids(broker, config.detections_topic)) == expected
        # Every repeated event is the same message: had B ended a lost track where it was frozen,
        # its track_ended would differ from the one A published for the same track later.
        for topic in (config.detections_topic, config.tracks_topic):
            _by_event(messages(broker, topic))
        assert any(m["type"] == "track_ended" and m["stream_id"] in taken for m in messages(broker, config.tracks_topic))
    finally:
        for worker in (a, b):
            if worker.process.poll() is None:
                worker.thaw()
                worker.kill()


# --- gallery changelog ------------------------------------------------------------------------------


def test_gallery_changelog_enrol_reaches_every_worker_and_erasure_retracts(  # type: ignore[no-untyped-def]
    broker: TansuBroker, model_store, faces_dir: Path, hamilton_frames: list[Frame], tmp_path: Path,
) -> None:
    """Enrol and erase with `facestream gallery --publish` on worker A's own gallery file,
    while A and B (each in its own group, with its own gallery) run."""
    base = kafka_config(broker, "changelog")
    ensure_topics(base)
    workers = {}
    for name in ("a", "b"):
        config = KafkaConfig(**{**vars(base), "group_id": f"changelog-{name}", "detections_topic": f"{name}.detections",
                                "tracks_topic": f"{name}.tracks", "alerts_topic": f"{name}.alerts",
                                "state_topic": f"{name}.state"})
        workers[name] = (config, WorkerProcess(config, model_store.home, tmp_path / f"{name}.log",
                                               gallery=tmp_path / f"{name}.db"))
    def gallery_command(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "stream_worker.cli", "gallery", "--db", str(tmp_path / "a.db"), "--publish",
             broker.bootstrap, "--changelog-topic", base.gallery_topic, *args],
            env={**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home), "FACESTREAM__MODELS__AUTO_FETCH": "0"},
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr

    try:
        gallery_command("enrol", "--id", "lin", "--name", LIN, "--min-quality", "0",
                        str(faces_dir / EXAMPLES / "lin-manuel-miranda.png"))
        lin_close_up = hamilton_frames[86:211]  # Lin in close-up (named from frame 156 when the stream starts at 86)
        publish(base, [Frame("stage-1", f.index, f.pts_ms, f.image, f.received) for f in lin_close_up])
        for name, (config, worker) in workers.items():
            wait_for(lambda c=config: any((m.get("identity") or {}).get("name") == LIN
                                          for m in messages(broker, c.tracks_topic)), 120,
                     f"worker {name} to name Lin", worker)

        gallery_command("remove", "lin")  # erase: tombstone + erasure event
        for name, (config, worker) in workers.items():
            wait_for(lambda c=config: any(m["schema"] == "facestream.retraction/1"
                                          for m in messages(broker, c.tracks_topic)), 60,
                     f"worker {name} to retract", worker)
            retractions = [m for m in messages(broker, config.detections_topic)
                           if m["schema"] == "facestream.retraction/1"]
            assert len(retractions) == 1
            jsonschema.validate(retractions[0], schema_for("facestream.retraction/1"))
            named = {m["event_id"] for m in messages(broker, config.detections_topic)
                     if m["schema"] == "facestream.frame/2" and any(f["identity"] for f in m["faces"])}
            assert named and set(retractions[0]["retracted_event_ids"]) >= named

        publish(base, [Frame("stage-2", f.index, f.pts_ms, f.image, f.received) for f in lin_close_up])
        for name, (config, worker) in workers.items():
            wait_for(lambda c=config: {m["event_id"] for m in messages(broker, c.detections_topic)}
                     >= {f"stage-2:{f.index}" for f in lin_close_up}, 120, f"worker {name} on stage-2", worker)
            after = [m for m in messages(broker, config.detections_topic) + messages(broker, config.tracks_topic)
                     if m["stream_id"] == "stage-2"]
            assert after and not any(m.get("identity") for m in after)
            assert not any(f["identity"] for m in after if m["schema"] == "facestream.frame/2" for f in m["faces"])
    finally:
        for _, worker in workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
                worker.wait(60)


def test_producers_are_idempotent_unless_configured_otherwise(broker: TansuBroker) -> None:
    """The broker gives the worker's producer an id and sequences its batches (InitProducerId):
    a batch resent after a lost acknowledgement is dropped by the broker, not duplicated."""
    for idempotent in (True, False):
        config = kafka_config(broker, f"idempotent-{idempotent}", idempotent_producer=idempotent)
        producer = make_producer(config)
        try:
            producer.send(config.frames_topic, key=b"k", value=b"v").get(timeout=10)
            manager = producer._transaction_manager  # (kafka-python keeps the producer id here)
            assert (manager is not None and manager.producer_id_and_epoch.producer_id >= 0) == idempotent
        finally:
            producer.close()


def test_an_erasure_the_changelog_did_not_acknowledge_fails_loudly(broker: TansuBroker) -> None:
    """An erasure is reported only once the brokers have it; a broker that does not answer
    (frozen) makes it an error, not a success."""
    from stream_worker.kafka.changelog import ChangelogNotAcknowledgedError

    config = kafka_config(broker, "unacked", request_timeout_ms=2000, delivery_timeout_ms=3000)
    ensure_topics(config)
    publisher = GalleryPublisher(make_producer(config), config.gallery_topic, timeout_s=3)
    publisher.publish_erasure("someone")  # a broker that answers: acknowledged
    broker.freeze()
    try:
        with pytest.raises(ChangelogNotAcknowledgedError, match="the erasure of 'lin' was not acknowledged by the "
                                                                "changelog unacked.gallery within 3 s"):
            publisher.publish_erasure("lin")
    finally:
        broker.resume()
        # the expired batch may still be on its way out of the producer: close(timeout=0) then
        # raises KafkaTimeoutError from its flush (a race seen once in CI); give it a few seconds
        publisher.producer.close(timeout=5)


# --- the command line ------------------------------------------------------------------------------


def test_produce_and_tail_commands(broker: TansuBroker, faces_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FACESTREAM__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap}
    produced = subprocess.run(
        [sys.executable, "-m", "stream_worker.cli", "produce", "--source", f"cam9={faces_dir / CLIP}",
         "--topic", "cli.frames", "--format", "h264", "--gop-frames", "30"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert produced.returncode == 0, produced.stderr
    assert json.loads(produced.stdout) | {"bytes": 0} == {"stream_id": "cam9", "topic": "cli.frames", "format": "h264",
                                                          "frames": 275, "messages": 10, "bytes": 0}
    records = read_topic(broker.bootstrap, "cli.frames")
    assert [int(header_dict(r.headers)["fs-frame-index"]) for r in records] == list(range(0, 275, 30))
    for record in records:
        jsonschema.validate(header_dict(record.headers), schema_for("facestream.frame-input/1"))

    producer = make_producer(KafkaConfig(bootstrap_servers=broker.bootstrap))
    good = {"schema": "facestream.track/3", "event_id": "cam9:track:1:started", "type": "track_started",
            "stream_id": "cam9", "track_id": 1, "frame_index": 4, "pts_ms": 133.4}
    producer.send("cli.results", key=b"cam9", value=json.dumps(good).encode())
    producer.send("cli.results", key=b"cam9", value=json.dumps({**good, "track_id": 0}).encode())  # fails its schema
    producer.send("cli.results", key=b"cam9", value=b"not json")
    producer.flush()
    producer.close()
    tail = subprocess.run([sys.executable, "-m", "stream_worker.cli", "tail", "--topic", "cli.results",
                           "--idle-exit-ms", "2000"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert tail.returncode == 1
    assert [json.loads(line) for line in tail.stdout.splitlines()] == [good]
    assert "fails facestream.track/3" in tail.stderr and "not JSON" in tail.stderr
    missing = subprocess.run([sys.executable, "-m", "stream_worker.cli", "tail", "--topic", "no.such.topic"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "topic no.such.topic does not exist" in missing.stderr


def test_run_publishes_a_file_sources_results_to_kafka(broker: TansuBroker, model_store, faces_dir: Path,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    """`facestream run --kafka-out`: the stream worker with the Kafka sink."""
    env = {**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home), "FACESTREAM__MODELS__AUTO_FETCH": "0",
           "FACESTREAM__KAFKA__DETECTIONS_TOPIC": "run.detections", "FACESTREAM__KAFKA__TRACKS_TOPIC": "run.tracks",
           "FACESTREAM__KAFKA__ALERTS_TOPIC": "run.alerts"}
    done = subprocess.run(
        [sys.executable, "-m", "stream_worker.cli", "run", "--source", f"clip={faces_dir / CLIP}", "--kafka-out",
         broker.bootstrap, "--out", str(tmp_path / "results.jsonl")],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    local = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    published = messages(broker, "run.detections") + messages(broker, "run.tracks")
    assert sorted(m["event_id"] for m in published) == sorted(m["event_id"] for m in local)
    assert len([m for m in published if m["schema"] == "facestream.frame/2"]) == 275
    for record in read_topic(broker.bootstrap, "run.tracks"):
        assert record.key == b"clip" and header_dict(record.headers)["fs-schema"] == "facestream.track/3"


def test_a_restarted_producer_continues_the_numbering_and_retries_are_dropped(  # type: ignore[no-untyped-def]
    broker: TansuBroker, detector, multitask, hamilton_frames: list[Frame],
) -> None:
    import dataclasses
    from datetime import timedelta

    config = kafka_config(broker, "restart", gallery_topic="")
    ensure_topics(config)
    first = hamilton_frames[:40]
    publish(config, first)
    publish(config, first[30:])  # a producer's retry: the same messages again
    later = first[0].received + timedelta(minutes=5)  # the edge box rebooted: numbering from 0, newer pictures
    publish(config, [dataclasses.replace(f, index=f.index - 40, received=later + timedelta(milliseconds=33 * k))
                     for k, f in enumerate(hamilton_frames[40:80])])
    stats = run_in_process(config, detector, multitask, None)
    assert (stats.frames, stats.duplicates, stats.dead_letters) == (80, 10, 0)
    frames = messages(broker, config.detections_topic)
    assert sorted(m["frame_index"] for m in frames) == list(range(80))
    assert len({m["event_id"] for m in frames}) == 80


def test_a_damaged_checkpoint_is_reported_and_the_partition_starts_fresh(  # type: ignore[no-untyped-def]
    broker: TansuBroker, detector, multitask, hamilton_frames: list[Frame], caplog: pytest.LogCaptureFixture,
) -> None:
    from kafka.partitioner.default import murmur2

    from stream_worker.kafka.checkpoints import CHECKPOINT_FORMAT

    config = kafka_config(broker, "damaged", gallery_topic="")
    ensure_topics(config)
    publish(config, hamilton_frames[:20])
    partition = (murmur2(b"hamilton") & 0x7FFFFFFF) % config.frames_partitions
    damaged = {"format": CHECKPOINT_FORMAT, "topic": config.frames_topic, "partition": partition, "offset": 5,
               "worker": "old", "streams": {"hamilton": {"format": "facestream.stream-state/1", "last_frame": "x"}}}
    producer = make_producer(config)
    producer.send(config.state_topic, key=f"{config.group_id}/{config.frames_topic}/{partition}".encode(),
                  value=json.dumps(damaged).encode())
    producer.flush()
    producer.close()
    with caplog.at_level("ERROR", logger="stream_worker.kafka.worker"):
        stats = run_in_process(config, detector, multitask, None)
    assert "the checkpoint cannot be restored" in caplog.text
    assert stats.frames == 20
    assert sorted(m["frame_index"] for m in messages(broker, config.detections_topic)) == list(range(20))


def test_reembed_publishes_the_new_templates_on_the_changelog(  # type: ignore[no-untyped-def]
    broker: TansuBroker, model_store, faces_dir: Path, tmp_path: Path,
) -> None:
    """A gallery enrolled with dlib, moved to SFace with `gallery reembed --publish`: the
    identity's changelog record then carries both templates, so workers running SFace get it."""
    from engines.config import Recognizer
    from engines.multitask.recognizers import profile

    base = kafka_config(broker, "reembed")
    ensure_topics(base)
    env = {**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home), "FACESTREAM__MODELS__AUTO_FETCH": "0"}

    def gallery_command(*args: str, recognizer: str = "sface-2021dec") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream_worker.cli", "gallery", "--db", str(tmp_path / "g.db"), *args],
            env={**env, "FACESTREAM__MODELS__RECOGNIZER": recognizer}, capture_output=True, text=True, timeout=120,
            check=False,
        )

    enrolled = gallery_command("enrol", "--id", "lin", "--min-quality", "0",
                               str(faces_dir / EXAMPLES / "lin-manuel-miranda.png"), recognizer="dlib-resnet-v1")
    assert enrolled.returncode == 0, enrolled.stderr
    moved = gallery_command("--publish", broker.bootstrap, "--changelog-topic", base.gallery_topic,
                            "reembed", "--model", "sface-2021dec")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["published"] == 1
    records = [r for r in read_topic(broker.bootstrap, base.gallery_topic) if r.key == b"lin"]
    assert records, "no changelog record for lin"
    models = {t["model"] for t in json.loads(records[-1].value)["templates"]}
    assert models == {profile(Recognizer.DLIB).model_id, profile(Recognizer.SFACE).model_id}


# --- the sightings service ------------------------------------------------------------------------


def test_two_workers_and_a_killed_sightings_service_give_exactly_one_sighting_per_track(  # type: ignore[no-untyped-def]
        broker: TansuBroker, model_store, hamilton_gallery: Gallery, faces_dir: Path, tmp_path: Path) -> None:
    """Two `facestream run --kafka-out` workers (one camera each) publish the clip's tracks;
    `facestream sightings serve` stores them, is killed (SIGKILL) and restarted: every ended
    track worth storing has exactly one sighting, and the tracks topic carries no embedding."""
    from gallery.sightings import SightingsStore

    config = kafka_config(broker, "sight", max_poll_records=1)
    ensure_topics(config)
    env = {**os.environ, **env_for(config), "FACESTREAM__MODELS__HOME": str(model_store.home),
           "FACESTREAM__MODELS__AUTO_FETCH": "0", "FACESTREAM__RUNTIME__DEVICE": "cpu"}
    store = tmp_path / "store"
    serve = [sys.executable, "-m", "stream_worker.cli", "sightings", "serve", "--store", str(store)]
    service = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve-1.log").open("wb"))
    workers = [subprocess.Popen([sys.executable, "-m", "stream_worker.cli", "run", "--source",
                                 f"{camera}={faces_dir / CLIP}", "--gallery", str(hamilton_gallery.path),
                                 "--kafka-out", broker.bootstrap, "--out", os.devnull],
                                env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{camera}.log").open("wb"))
               for camera in ("cam-a", "cam-b")]

    def stored() -> int:
        if not (store / "store.sqlite").exists():
            return 0
        with SightingsStore(store, create=False) as s:
            return s.count()

    wait_for(lambda: stored() >= 2, 180, "the sightings service to store its first sightings")
    service.send_signal(signal.SIGKILL)
    service.wait()
    killed_at = stored()
    for worker, camera in zip(workers, ("cam-a", "cam-b"), strict=True):
        assert worker.wait(timeout=240) == 0, (tmp_path / f"{camera}.log").read_text()[-3000:]
    restarted = subprocess.run([*serve, "--idle-exit-ms", "5000"], env=env, capture_output=True, text=True,
                               timeout=180, check=False)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(restarted.stderr.strip().splitlines()[-1])["summary"]

    ended = {m["event_id"]: m for m in messages(broker, config.tracks_topic) if m["type"] == "track_ended"}
    assert {m["stream_id"] for m in ended.values()} == {"cam-a", "cam-b"}
    assert all("embedding" not in m["summary"] for m in ended.values())  # biometrics only on their own topic
    for m in messages(broker, config.embeddings_topic):
        jsonschema.validate(m, schema_for(m["schema"]))
    worth = {i for i, m in ended.items() if m["summary"]["frames"] >= 3 and m["summary"]["best_shot"]["quality"] >= 0.2}
    with SightingsStore(store, create=False) as s:
        ids = s.ids()
        assert len(ids) == len(set(ids)) and set(ids) == worth
        lin = [s.get(i) for i in ids if ended[i].get("identity", {}).get("id") == "lin"]
        assert {x.stream_id for x in lin if x is not None} == {"cam-a", "cam-b"}
        assert all(x is not None and 1 <= len(x.vectors) <= 5 for x in lin)
    assert summary["stored"] == len(worth) - killed_at  # the restart stored exactly what was missing
    # re-scan on enrolment, published: Lin put on a watch list finds his stored sightings on the alerts topic
    enrol = subprocess.run([sys.executable, "-m", "stream_worker.cli", "gallery", "--db", str(tmp_path / "watch.db"),
                            "--publish", broker.bootstrap, "enrol", "--id", "lin", "--watch", "--sightings", str(store),
                            str(faces_dir / EXAMPLES / "lin-manuel-miranda.png")],
                           env=env, capture_output=True, text=True, timeout=180, check=False)
    assert enrol.returncode == 0, enrol.stderr[-3000:]
    alerts = [m for m in messages(broker, config.alerts_topic) if m["schema"] == "facestream.sighting-alert/1"]
    lin_ids = {i for i in ids if ended[i].get("identity", {}).get("id") == "lin"}
    assert lin_ids <= {a["sighting_id"] for a in alerts} and {a["identity_id"] for a in alerts} == {"lin"}
    # erasure with sightings, published: the service erases Lin's sightings, and refuses one named Lin arriving late
    remove = subprocess.run([sys.executable, "-m", "stream_worker.cli", "gallery", "--db", str(tmp_path / "watch.db"),
                             "--publish", broker.bootstrap, "remove", "lin", "--with-sightings"],
                            env=env, capture_output=True, text=True, timeout=180, check=False)
    assert remove.returncode == 0, remove.stderr[-3000:]

    def serve_until_idle() -> dict[str, Any]:
        done = subprocess.run([*serve, "--idle-exit-ms", "5000"], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return dict(json.loads(done.stderr.strip().splitlines()[-1])["summary"])

    assert serve_until_idle()["sightings_erased"] == len(lin_ids)
    late = next(m for m in messages(broker, config.embeddings_topic) if m["event_id"] in lin_ids)
    producer = make_producer(config)
    producer.send(config.embeddings_topic, key=late["stream_id"].encode(),
                  value=json.dumps({**late, "event_id": "cam-c:track:99:ended", "stream_id": "cam-c"}).encode())
    producer.send(config.embeddings_topic, key=b"cam-c", value=json.dumps({**late, "event_id": "cam-c:track:99:ended",
                                                                           "stream_id": "cam-c"}).encode())
    producer.flush()
    producer.close()
    final = serve_until_idle()
    assert final["erased"] == 1 and final["dead_letters"] == 1 and final["stored"] == 0
    with SightingsStore(store, create=False) as s:
        assert not [i for i in s.ids() if (x := s.get(i)) is not None and x.identity_id == "lin"]
        assert "cam-c:track:99:ended" not in s.ids()


def test_the_sightings_service_dead_letters_what_cannot_be_a_sighting(broker: TansuBroker, tmp_path: Path) -> None:
    from engines.config import DEFAULT_RECOGNIZER
    from engines.multitask.recognizers import profile
    from gallery.sightings import SightingsStore
    from stream_worker.kafka.sightings_service import SightingsService
    from stream_worker.sightings_feed import SightingsFeed

    config = kafka_config(broker, "sightbad")
    ensure_topics(config)
    good = {"schema": "facestream.track-embeddings/2", "event_id": "cam:track:1:ended", "stream_id": "cam",
            "track_id": 1, "space_id": profile(DEFAULT_RECOGNIZER).model_id,
            "embeddings": [{"quality": 0.8, "vector": "AAAAAA=="}],
            "summary": {"first_frame": 0, "last_frame": 9, "first_pts_ms": 0.0, "last_pts_ms": 300.0, "frames": 10,
                        "best_shot": {"frame_index": 3, "box": [0, 0, 10, 10], "quality": 0.8, "thumbnail": None},
                        "identity": None, "votes": [], "age": {"value": 30.0, "spread": 2.0},
                        "gender": {"value": "male", "male_probability": 0.9},
                        "first_utc": "2026-11-29T10:00:00.000+00:00", "last_utc": "2026-11-29T10:00:01.000+00:00"}}
    vector = np.zeros(128, "<f4")
    vector[0] = 1.0
    import base64

    valid = {**good, "embeddings": [{"quality": 0.8, "vector": base64.b64encode(vector.tobytes()).decode()}]}
    producer = make_producer(config)
    for key, value in ((b"cam", b"not json"), (b"cam", json.dumps(good).encode()),  # a 1-float "embedding"
                       (b"cam", json.dumps({**valid, "space_id": "unknown@0"}).encode()),
                       (b"other", json.dumps(valid).encode()),  # the key is not its stream
                       (b"cam", json.dumps({**valid, "summary": {**valid["summary"], "first_utc": "yesterday"}}).encode()),
                       (b"cam", json.dumps(valid).encode())):
        producer.send(config.embeddings_topic, key=key, value=value)
    producer.flush()
    producer.close()
    from datetime import UTC, datetime

    from gallery.sightings import Sighting

    metrics = WorkerMetrics()
    with SightingsStore(tmp_path / "store") as store:
        old = datetime(2026, 1, 1, tzinfo=UTC)  # a day long past the retention period
        store.add(Sighting(sighting_id="old:track:1:ended", stream_id="old", track_id=1, first_frame=0, last_frame=1,
                           first_pts_ms=0.0, last_pts_ms=1.0, start_utc=old, end_utc=old, frames=2, quality=0.9,
                           space_id=profile(DEFAULT_RECOGNIZER).model_id, vectors=vector[None]))
        service = SightingsService(config, SightingsFeed(store, metrics=metrics), idle_exit_ms=3000, retention_days=30)
        counts = service.run()
        assert store.ids() == ["cam:track:1:ended"]  # the good one, and the service kept going; the old day is gone
        assert service.health()["status"] == "ok"
    assert counts["stored"] == 1 and counts["dead_letters"] == 5 and counts["days_expired"] == 1
    assert metric_total(metrics, "facestream_sightings_days_expired") == 1
    assert metric_total(metrics, "facestream_sightings") == 1  # one track offered: stored
    assert metric_total(metrics, "facestream_dead_letters") == 5
    reasons = [header_dict(r.headers)["fs-dlq-reason"] for r in read_topic(broker.bootstrap, config.dead_letter_topic)]
    assert len(reasons) == 5 and any("not the stream id" in r for r in reasons)
    assert any("unknown embedding space" in r for r in reasons) and any("dimensions" in r for r in reasons)
    assert any("UTC" in r or "ISO" in r for r in reasons)


def test_a_store_that_cannot_be_written_stops_the_sightings_service_without_committing_past_it(
        broker: TansuBroker, tmp_path: Path) -> None:
    """The disk fills up (the system's fault, injected at the store's SQLite write): the
    service stops with a clear error; restarted on a store that works, it gets the same
    records again, so nothing is lost."""
    import base64
    import sqlite3
    from datetime import UTC, datetime

    from engines.config import DEFAULT_RECOGNIZER
    from engines.multitask.recognizers import profile
    from gallery.sightings import SightingsError, SightingsStore
    from stream_worker.kafka.sightings_service import SightingsService
    from stream_worker.sightings_feed import SightingsFeed

    class FillsUp(SightingsStore):
        def _add(self, sighting):  # type: ignore[no-untyped-def]
            if self.count() >= 1:
                raise sqlite3.OperationalError("database or disk is full")
            return super()._add(sighting)

    config = kafka_config(broker, "sightfull")
    ensure_topics(config)
    producer = make_producer(config)
    at = datetime(2026, 11, 29, 10, tzinfo=UTC).isoformat()
    for n in (1, 2, 3):
        vector = np.zeros(128, "<f4")
        vector[n] = 1.0
        message = {"schema": "facestream.track-embeddings/2", "event_id": f"cam:track:{n}:ended", "stream_id": "cam",
                   "track_id": n, "space_id": profile(DEFAULT_RECOGNIZER).model_id,
                   "embeddings": [{"quality": 0.8, "vector": base64.b64encode(vector.tobytes()).decode()}],
                   "summary": {"first_frame": 0, "last_frame": 9, "first_pts_ms": 0.0, "last_pts_ms": 300.0,
                               "frames": 10, "best_shot": {"frame_index": 3, "box": [0, 0, 10, 10], "quality": 0.8,
                                                           "thumbnail": None},
                               "identity": None, "votes": [], "age": {"value": 30.0, "spread": 2.0},
                               "gender": {"value": "male", "male_probability": 0.9}, "first_utc": at, "last_utc": at}}
        producer.send(config.embeddings_topic, key=b"cam", value=json.dumps(message).encode())
    producer.flush()
    producer.close()
    with FillsUp(tmp_path / "store") as full:
        with pytest.raises(SightingsError, match="cannot be stored.*disk is full"):
            SightingsService(config, SightingsFeed(full), idle_exit_ms=3000).run()
        assert full.ids() == ["cam:track:1:ended"]
    with SightingsStore(tmp_path / "store", create=False) as store:  # the disk has room again
        counts = SightingsService(config, SightingsFeed(store), idle_exit_ms=3000).run()
        assert sorted(store.ids()) == [f"cam:track:{n}:ended" for n in (1, 2, 3)]
    assert counts["stored"] == 2  # (and record 1 again, if it was not committed: a redelivery)
