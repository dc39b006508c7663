"""Prometheus metrics and the health endpoint of a worker.

One :class:`WorkerMetrics` per worker, with its own registry (no process-global state).
:func:`serve` starts a small HTTP server in a daemon thread: ``/metrics`` (Prometheus text
format) and ``/health`` (JSON: streams, engine device and backends, fallback flag).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from stream_worker.pipeline.face_pipeline import FrameOutput

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("facestream_frames_in", "Frames decoded", ["stream"], registry=r)
        self.frames_processed = Counter("facestream_frames_processed", "Frames through the pipeline", ["stream"], registry=r)
        self.frames_dropped = Counter("facestream_frames_dropped", "Frames dropped to keep up (realtime pacing)",
                                      ["stream"], registry=r)
        self.frames_lost = Counter("facestream_frames_lost", "Frames lost by live sources while reconnecting",
                                   ["stream"], registry=r)
        self.frames_failed = Counter("facestream_frames_failed", "Frames the pipeline refused as bad input (skipped "
                                     "or dead-lettered)", ["stream"], registry=r)
        self.corrupt_packets = Counter("facestream_corrupt_packets", "Undecodable packets skipped", ["stream"], registry=r)
        self.faces = Counter("facestream_faces", "Faces detected", ["stream"], registry=r)
        self.tracks = Counter("facestream_tracks_started", "Tracks confirmed", ["stream"], registry=r)
        self.identifications = Counter("facestream_track_identifications", "Tracks identified (and changes)",
                                       ["stream"], registry=r)
        self.stage_seconds = Histogram("facestream_stage_seconds", "Time per pipeline call and stage", ["stage"],
                                       registry=r, buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3))
        self.queue_depth = Gauge("facestream_queue_frames", "Frames waiting per stream", ["stream"], registry=r)
        self.streams = Gauge("facestream_streams", "Streams being processed", registry=r)
        self.dead_letters = Counter("facestream_dead_letters", "Input messages sent to the dead-letter topic",
                                    ["reason"], registry=r)
        self.failures = Counter("facestream_failures", "Failures that were not the input's fault (a model, the "
                                "gallery, the broker): each sent the worker back to its last checkpoint to retry",
                                registry=r)
        self.checkpoints = Counter("facestream_kafka_checkpoints", "Offsets committed with their pipeline state",
                                   registry=r)
        self.rebalances = Counter("facestream_kafka_rebalances", "Partitions revoked or lost", registry=r)
        self.sightings = Counter("facestream_sightings", "Ended tracks offered to the sightings store, by outcome "
                                 "(stored, redelivered, too_short, too_poor, watch_list_only, erased)", ["outcome"],
                                 registry=r)
        self.sightings_days_expired = Counter("facestream_sightings_days_expired",
                                              "Day partitions of sightings deleted by retention", registry=r)
        self.sightings_erased = Counter("facestream_sightings_erased",
                                        "Sightings erased with their identity (gallery changelog)", registry=r)
        self.lag = Gauge("facestream_kafka_lag_messages", "Input messages not yet processed, per owned partition "
                         "(scale the group on this)", ["partition"], registry=r)

    def count_output(self, output: FrameOutput) -> None:
        """One processed frame: its faces, the tracks it confirmed and identified."""
        stream = output.frame.stream_id
        self.frames_processed.labels(stream).inc()
        self.faces.labels(stream).inc(len(output.result.faces))
        self.tracks.labels(stream).inc(sum(e.type == "track_started" for e in output.events))
        self.identifications.labels(stream).inc(sum(e.type == "track_identified" for e in output.events))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def serve(metrics: WorkerMetrics, health: Callable[[], dict[str, Any]], host: str, port: int) -> ThreadingHTTPServer:
    """Start /metrics and /health on ``host:port`` in a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, kind, code = metrics.exposition(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/health":
                report = health()
                body, kind = json.dumps(report).encode(), "application/json"
                code = 200 if report.get("status") == "ok" else 503
            else:
                body, kind, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, server.server_address[1])
    return server
