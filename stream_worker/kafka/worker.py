"""The Kafka worker: frames topic in, result topics out, at least once.

One consumer in the worker group reads the frames topic (keyed by stream id, so a camera
lives on one partition and one worker at a time); each poll's messages are decoded per
stream (:mod:`stream_worker.kafka.decode`), run through the pipeline with frames of
different streams batched together, and published (``acks=all``) to the result topics.

Delivery and state:

- Checkpoints: every ``checkpoint_interval_ms`` (and when partitions are revoked) the
  worker waits until the broker has acknowledged every result so far, commits the input
  offsets, and then writes each partition's pipeline state (tracker, tracks, schedules:
  :meth:`FacePipeline.stream_checkpoint`) with that offset to the compacted state topic.
  A worker that is given the partition (after a crash, or a rebalance) restores that state
  and resumes at that offset, so the replayed frames produce the same messages with the
  same event ids, and de-duplicating by event id gives what one uninterrupted run gives.
  Should the commit fail (the group moved on), the state is not written. Best-shot JPEGs
  are messages of their own beside the checkpoint (:func:`checkpoint.detach_shots`):
  written once, acknowledged before the first checkpoint that refers to them, and
  tombstoned once the partition's latest checkpoint no longer does.
- Malformed messages go to the dead-letter topic with the original key, value and headers
  and a reason; their offsets are committed like any other.
- Rebalance: on revoke the worker ends the partition's tracks (``track_ended`` events),
  flushes, commits and checkpoints a closed state (so track ids are never reused); on
  assign it restores the partition's checkpoint.
- Broker outages: the producer retries until ``delivery_timeout_ms``; results that still
  fail make the worker rewind every partition to its last checkpoint.
- Gallery changelog (:mod:`stream_worker.kafka.changelog`): replayed before the first
  frame and followed between polls. An erasure makes live tracks forget the identity and
  publishes, per stream, a retraction naming the event ids this worker published with it.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gallery.gallery import Gallery
from gallery.store import utc_now
from stream_worker.kafka.changelog import GalleryFollower
from stream_worker.kafka.client import (
    KafkaConfig,
    TopicReader,
    ensure_topics,
    make_consumer,
    make_producer,
)
from stream_worker.kafka.decode import StreamDecoder
from stream_worker.kafka.publish import KafkaPublisher
from stream_worker.kafka.wire import (
    DEAD_LETTER_KINDS,
    JSON_TYPE,
    DeadLetterKind,
    MalformedMessageError,
    dead_letter_headers,
    parse_frame_message,
)
from stream_worker.local.sinks import Sink
from stream_worker.messages.state import (
    SHOT_MARK,
    attach_shots,
    detach_shots,
    is_shot_of,
    shot_refs,
)
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput
from stream_worker.pipeline.frames import Frame

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "facestream.partition-checkpoint/1"


@dataclass(frozen=True, kw_only=True)
class KafkaWorkerOptions:
    max_pixels: int = 40_000_000
    """Decoded frames above this many pixels are dead letters."""
    idle_exit_ms: int = 0
    """Stop after this long without input while owning partitions (batch jobs, tests); 0: run
    until stopped."""


@dataclass
class _StreamInput:
    """A stream's decoder and frame numbering (kept in checkpoints)."""

    decoder: StreamDecoder
    index_offset: int = 0
    """Added to the producer's frame indices after it restarted its numbering."""
    last_capture_ms: int = -1

    def to_json(self) -> dict[str, int]:
        return {"index_offset": self.index_offset, "last_capture_ms": self.last_capture_ms}


@dataclass
class _Pending:
    frame: Frame
    record: Any


@dataclass
class KafkaWorkerStats:
    records: int = 0
    frames: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    checkpoints: int = 0
    rebalances: int = 0
    rewinds: int = 0
    retractions: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "frames": self.frames, "dead_letters": self.dead_letters,
                "duplicates": self.duplicates, "checkpoints": self.checkpoints, "rebalances": self.rebalances,
                "rewinds": self.rewinds, "retractions": self.retractions}


def _listener(worker: KafkaWorker) -> Any:
    """A kafka-python rebalance listener calling the worker (built on first use: kafka is
    imported lazily)."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            worker.revoke(list(revoked), in_listener=True)

        def on_partitions_assigned(self, assigned: Any) -> None:
            worker.assign(list(assigned))

        def on_partitions_lost(self, lost: Any) -> None:  # the group moved on without this worker
            worker.revoke(list(lost), lost=True)

    return Listener()


def _log_commit_failure(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("commit of %s failed: %s", {tp.partition: o.offset for tp, o in offsets.items()}, response)


class CheckpointReader:
    """The latest checkpoint per partition and the best shots beside them, read from the
    compacted state topic."""

    def __init__(self, config: KafkaConfig) -> None:
        self.reader = TopicReader(config, config.state_topic)
        self.latest: dict[str, dict[str, Any]] = {}
        self.shots: dict[str, bytes] = {}

    def refresh(self, timeout_s: float = 30.0) -> None:
        for record in self.reader.read_to_end(timeout_s):
            key = record.key.decode() if record.key else ""
            if record.value is None:
                self.latest.pop(key, None)
                self.shots.pop(key, None)
                continue
            if SHOT_MARK in key:
                self.shots[key] = record.value
                continue
            try:
                value = json.loads(record.value)
            except ValueError:
                log.error("state topic offset %d: not JSON; ignored", record.offset)
                continue
            if value.get("format") == CHECKPOINT_FORMAT:
                self.latest[key] = value

    def close(self) -> None:
        self.reader.close()


class KafkaWorker:
    def __init__(
        self,
        pipeline: FacePipeline,
        config: KafkaConfig,
        options: KafkaWorkerOptions | None = None,
        *,
        gallery: Gallery | None = None,
        metrics: WorkerMetrics | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.options = options or KafkaWorkerOptions()
        self.gallery = gallery
        self.metrics = metrics
        if metrics is not None:  # every kind from the start at 0, so alerts can rate() them
            for kind in DEAD_LETTER_KINDS:
                metrics.dead_letters.labels(kind)
        self.sinks = list(sinks)
        self.stats = KafkaWorkerStats()
        self.worker_id = config.client_name
        self.owned: set[Any] = set()
        self.partition_streams: dict[Any, set[str]] = collections.defaultdict(set)
        self.positions: dict[Any, int] = {}
        """Next offset to commit, per owned partition (every record before it is done)."""
        self.inputs: dict[str, _StreamInput] = {}
        self._dirty: set[Any] = set()
        """Partitions with input consumed since their last checkpoint."""
        self._last_checkpoint = time.monotonic()
        self._shots: dict[Any, set[str]] = {}
        """Per owned partition: the best-shot keys on the state topic (see :meth:`checkpoint`)."""
        self._last_loop: float | None = None
        """When the poll loop last turned (None before its first turn), for :meth:`health`."""
        self.last_lag: dict[int, int] = {}
        """Partition -> messages behind, as of the last poll (for /health)."""
        self._frames_per_record = 1.0
        """Running mean of frames per input message (1 for images, a GOP for video chunks)."""
        self.producer: Any = None
        self.publisher: Any = None
        self.consumer: Any = None
        self.checkpoints: CheckpointReader | None = None
        self.follower: GalleryFollower | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if cfg.create_topics:
            ensure_topics(cfg)
        self.producer = make_producer(cfg)
        self.publisher = KafkaPublisher(self.producer, cfg)
        self.checkpoints = CheckpointReader(cfg)
        if cfg.gallery_topic and self.gallery is not None:
            self.follower = GalleryFollower(cfg, self.gallery, self.retract)
            applied = self.follower.catch_up()
            log.info("gallery changelog replayed: %d records", applied)
        self.consumer = make_consumer(cfg, group=True)
        self.consumer.subscribe([cfg.frames_topic], listener=_listener(self))
        log.info("worker %s joined group %s on %s (%s)", self.worker_id, cfg.group_id, cfg.frames_topic,
                 cfg.bootstrap_servers)

    def run(self, stop: threading.Event | None = None) -> KafkaWorkerStats:
        stop = stop or threading.Event()
        self.start()
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                self._last_loop = time.monotonic()
                if self.follower is not None:
                    self.follower.poll()
                batch = self.consumer.poll(timeout_ms=200, max_records=self._max_records())
                if batch or not self.owned:  # idle time counts once the group has given us partitions
                    idle_since = time.monotonic()
                if batch:
                    self._handle(batch)
                    self._report_lag()
                elif self.options.idle_exit_ms and time.monotonic() - idle_since > self.options.idle_exit_ms / 1000:
                    log.info("no input for %d ms: stopping", self.options.idle_exit_ms)
                    break
                due = time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval_ms / 1000
                if due and self._dirty:
                    self.checkpoint(sorted(self._dirty & self.owned))
        finally:
            self.close()
        return self.stats

    def health(self) -> dict[str, Any]:
        """The /health report. ``status`` is ``starting`` before the poll loop's first turn
        (models load, the changelog replays), ``ok`` while it turns, and ``stalled`` when it
        has not turned for :meth:`stall_after_s`. The metrics server answers 503 for anything
        but ``ok``, so a liveness probe restarts a stalled worker."""
        since = None if self._last_loop is None else time.monotonic() - self._last_loop
        if since is None:
            status = "starting"
        else:
            status = "stalled" if since > self.stall_after_s() else "ok"
        return {"status": status, "seconds_since_poll": None if since is None else round(since, 3),
                "partitions": sorted(tp.partition for tp in self.owned), "lag": dict(self.last_lag),
                **self.stats.to_json()}

    def stall_after_s(self) -> float:
        """The longest a healthy loop goes without turning: a flush that waits out a broker
        outage (``delivery_timeout_ms``) plus one poll's work (kept within
        ``max_poll_interval_ms``). A hung worker's partitions move to the rest of the group
        after ``max_poll_interval_ms`` anyway; this only decides when to restart it."""
        return (self.config.delivery_timeout_ms + self.config.max_poll_interval_ms) / 1000

    def lag(self) -> dict[int, int]:
        """Messages behind the newest, per owned partition (where the consumer knows)."""
        out = {}
        for tp in self.owned:
            high, position = self.consumer.highwater(tp), self.positions.get(tp)
            if high is not None and position is not None:
                out[tp.partition] = max(0, high - position)
        return out

    def _report_lag(self) -> None:
        self.last_lag = self.lag()
        if self.metrics is not None:
            for partition, behind in self.last_lag.items():
                self.metrics.lag.labels(str(partition)).set(behind)

    def _max_records(self) -> int:
        """Records for the next poll: ``max_poll_frames`` frames (a video chunk holds many),
        at most ``max_poll_records``, so one poll's work stays well within
        ``max_poll_interval_ms``."""
        frames = max(self._frames_per_record, 1.0)
        return max(1, min(self.config.max_poll_records, int(self.config.max_poll_frames / frames)))

    def close(self) -> None:
        """Leave cleanly: end the tracks, publish, commit, checkpoint, leave the group."""
        if self.consumer is not None:
            try:
                self.revoke(list(self.owned))
            finally:
                self.consumer.close()
                self.consumer = None
        for sink in self.sinks:
            sink.close()
        for part in (self.checkpoints, self.follower):
            if part is not None:
                part.close()
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
            self.producer = None

    # --- input ------------------------------------------------------------------------------

    def _handle(self, batch: dict[Any, list[Any]]) -> None:
        pending: dict[str, collections.deque[_Pending]] = collections.defaultdict(collections.deque)
        for tp, records in batch.items():
            if tp not in self.owned:
                continue
            for record in records:
                self.stats.records += 1
                self._ingest(tp, record, pending)
                self.positions[tp] = record.offset + 1
                self._dirty.add(tp)
        self._process(pending)

    def _ingest(self, tp: Any, record: Any, pending: dict[str, collections.deque[_Pending]]) -> None:
        try:
            size = len(record.value) if record.value is not None else 0
            if size > self.config.max_message_bytes:
                raise MalformedMessageError(f"oversized message: {size} bytes > max_message_bytes "
                                            f"{self.config.max_message_bytes}", kind="oversized")
            message = parse_frame_message(record.key, record.headers)
            if record.value is None:
                raise MalformedMessageError("no payload", kind="payload")
            for other, streams in self.partition_streams.items():
                if other != tp and message.stream_id in streams:
                    raise MalformedMessageError(f"stream {message.stream_id} belongs to partition {other.partition}, "
                                                f"not {tp.partition} (partition count changed?)", kind="partition")
            self.partition_streams[tp].add(message.stream_id)
            source = self._input(message.stream_id)
            frames = source.decoder.decode(message, record.value)
        except MalformedMessageError as exc:
            self._dead_letter(record, exc.kind, str(exc))
            return
        except Exception as exc:  # a decoder bug must not crash-loop the worker on one message
            log.exception("decoding %s[%d]@%d failed", record.topic, record.partition, record.offset)
            self._dead_letter(record, "decode", f"decode error ({type(exc).__name__}: {exc})")
            return
        self._frames_per_record += 0.2 * (len(frames) - self._frames_per_record)
        state = self.pipeline.streams.get(message.stream_id)
        queue = pending[message.stream_id]
        last = queue[-1].frame.index if queue else state.last_frame if state is not None else -1
        if frames and frames[0].index + source.index_offset <= last and message.capture_ms > source.last_capture_ms:
            # Older numbers but newer pictures: the producer restarted its numbering (an edge
            # box rebooted). Continue the stream's numbering rather than drop its frames.
            source.index_offset = last + 1 - frames[0].index
            log.warning("stream %s: the producer restarted its frame numbering at %d; continuing at %d",
                        message.stream_id, frames[0].index, last + 1)
        source.last_capture_ms = max(source.last_capture_ms, message.capture_ms)
        for frame in frames:
            index = frame.index + source.index_offset
            if index <= last:
                self.stats.duplicates += 1  # a producer's retry: the same message again
                continue
            queue.append(_Pending(dataclasses.replace(frame, index=index) if source.index_offset else frame, record))
            last = index

    def _input(self, stream_id: str) -> _StreamInput:
        source = self.inputs.get(stream_id)
        if source is None:
            source = self.inputs[stream_id] = _StreamInput(StreamDecoder(stream_id, max_pixels=self.options.max_pixels))
        return source

    def _dead_letter(self, record: Any, kind: DeadLetterKind, reason: str) -> None:
        cfg = self.config
        value = record.value or b""
        headers = dead_letter_headers(record.headers, kind, reason, record.topic, record.partition, record.offset,
                                      self.worker_id)
        limit = cfg.max_message_bytes
        if len(value) > limit:  # keep what fits; say so
            headers.append(("fs-dlq-original-bytes", str(len(value)).encode()))
            value = value[:limit]
        self.publisher.send(cfg.dead_letter_topic, record.key, value, headers)
        self.stats.dead_letters += 1
        self.stats.reasons[kind] += 1
        if self.metrics is not None:
            self.metrics.dead_letters.labels(kind).inc()
        log.warning("dead letter: %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)

    # --- pipeline and output --------------------------------------------------------------------

    def _process(self, pending: dict[str, collections.deque[_Pending]]) -> None:
        while any(pending.values()):
            batch = [queue.popleft() for queue in pending.values() if queue]
            try:
                outputs = self.pipeline.process([p.frame for p in batch])
            except Exception:
                if len(batch) == 1:
                    log.exception("pipeline failed on %s frame %d", batch[0].frame.stream_id, batch[0].frame.index)
                    self._dead_letter(batch[0].record, "pipeline", "pipeline error (see the worker log)")
                    continue
                for item in reversed(batch):  # retry one at a time to isolate the bad frame
                    pending[item.frame.stream_id].appendleft(item)
                self._process_singly(pending)
                continue
            for output in outputs:
                self._emit(output)

    def _process_singly(self, pending: dict[str, collections.deque[_Pending]]) -> None:
        for queue in pending.values():
            if queue:
                item = queue.popleft()
                self._process({item.frame.stream_id: collections.deque([item])})

    def _emit(self, output: FrameOutput) -> None:
        self.publisher.frame(output)
        for sink in self.sinks:
            sink.write(output)
        self.stats.frames += 1
        if self.metrics is not None:
            self.metrics.count_output(output)

    # --- checkpoints ------------------------------------------------------------------------------

    def _checkpoint_key(self, tp: Any) -> str:
        return f"{self.config.group_id}/{tp.topic}/{tp.partition}"

    def checkpoint(self, partitions: Sequence[Any], *, states: dict[str, Any] | None = None,
                   in_listener: bool = False) -> bool:
        """Flush, commit and write the state of ``partitions`` (their streams' current
        state, or ``states`` where given); True when all three happened.

        ``in_listener``: called from the rebalance listener, which runs on the consumer's
        network thread where kafka-python cannot block on the consumer: the commit is sent
        asynchronously (ahead of the group's re-join on the same connection) and the state
        is written without waiting for it; the group still holds this generation then."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        self._last_checkpoint = time.monotonic()
        if not self.publisher.flush():
            if not in_listener:  # (a revoked partition's next owner resumes from its last checkpoint)
                self.rewind()
            return False
        offsets = {tp: OffsetAndMetadata(self.positions[tp], "", -1) for tp in partitions if tp in self.positions}
        if not offsets:
            return True
        try:
            if in_listener:
                self.consumer.commit_async(offsets, callback=_log_commit_failure)
            else:
                self.consumer.commit(offsets)
        except KafkaError as exc:  # the group moved on: the new owner resumes from the previous checkpoint
            log.warning("commit failed (%s); not checkpointing %s", exc, sorted(tp.partition for tp in offsets))
            return False
        written: dict[Any, tuple[bytes | None, set[str]]] = {}
        new_shots = False
        for tp, offset in offsets.items():
            state = {
                "format": CHECKPOINT_FORMAT, "topic": tp.topic, "partition": tp.partition, "offset": offset.offset,
                "worker": self.worker_id, "written_utc": utc_now(),
                "streams": {sid: states[sid] if states is not None and sid in states
                            else self.pipeline.stream_checkpoint(sid)
                            for sid in sorted(self.partition_streams.get(tp, ()))},
                "inputs": {sid: self.inputs[sid].to_json() for sid in sorted(self.partition_streams.get(tp, ()))
                           if sid in self.inputs},
            }
            shots = detach_shots(state, self._checkpoint_key(tp))
            present = self._shots.setdefault(tp, set())
            for key in sorted(shots.keys() - present):  # new best shots only
                self.publisher.send(self.config.state_topic, key, shots[key], [("content-type", b"image/jpeg")])
                present.add(key)
                new_shots = True
            written[tp] = (self._fitting_checkpoint(state), set(shots))
        if new_shots and not self.publisher.flush():  # a checkpoint refers only to acknowledged shots
            log.warning("best shots not written; not checkpointing (the next owner replays from the previous one)")
            return False
        for tp, (encoded, _) in written.items():
            if encoded is not None:
                self.publisher.send(self.config.state_topic, self._checkpoint_key(tp), encoded,
                                    [("content-type", JSON_TYPE.encode())])
        if not self.publisher.flush():
            log.warning("checkpoint state not written; the next owner replays from the previous one")
            return False
        for tp, (encoded, refs) in written.items():
            if encoded is not None:  # the latest checkpoint no longer refers to these
                self._tombstone_shots(tp, self._shots[tp] - refs)
        self._dirty -= set(offsets)
        self.stats.checkpoints += 1
        if self.metrics is not None:
            self.metrics.checkpoints.inc()
        return True

    def _tombstone_shots(self, tp: Any, keys: set[str]) -> None:
        for key in sorted(keys):
            self.publisher.send(self.config.state_topic, key, None, [])
        self._shots.get(tp, set()).difference_update(keys)

    def _fitting_checkpoint(self, state: dict[str, Any]) -> bytes | None:
        """The checkpoint as JSON (its best shots detached), or None when it exceeds
        ``max_message_bytes`` (not written: the next owner replays from the previous
        checkpoint, which stays exact, only longer)."""
        encoded = json.dumps(state).encode()
        if len(encoded) <= self.config.max_message_bytes:
            return encoded
        log.error("partition %d: checkpoint of %d bytes exceeds max_message_bytes %d; not written (a take-over "
                  "replays from the previous one)", state["partition"], len(encoded), self.config.max_message_bytes)
        return None

    def rewind(self) -> None:
        """Go back to every owned partition's last checkpoint (results could not be delivered)."""
        self.stats.rewinds += 1
        log.warning("rewinding partitions %s to their last checkpoints", sorted(tp.partition for tp in self.owned))
        owned = list(self.owned)
        for tp in owned:
            for sid in self.partition_streams.pop(tp, set()):
                self.pipeline.end_stream(sid)  # discard: the checkpoint restores it
                self.inputs.pop(sid, None)
            self.positions.pop(tp, None)
            self._dirty.discard(tp)
        self.assign(owned, rewinding=True)

    # --- rebalance --------------------------------------------------------------------------------

    def revoke(self, partitions: list[Any], *, lost: bool = False, in_listener: bool = False) -> None:
        partitions = [tp for tp in partitions if tp in self.owned]
        if not partitions:
            return
        self.stats.rebalances += 1
        if self.metrics is not None:
            self.metrics.rebalances.inc()
        closed: dict[str, Any] = {}
        for tp in partitions:
            for sid in sorted(self.partition_streams.get(tp, ())):
                closed[sid] = self.pipeline.stream_checkpoint(sid, closed=True)
                if lost:
                    self.pipeline.end_stream(sid)  # someone else owns it now: publish nothing
                    continue
                events, thumbnails = self.pipeline.end_stream(sid)
                self.publisher.events(sid, events, thumbnails)
                for sink in self.sinks:
                    sink.write_events(sid, events, thumbnails)
        if not lost:
            self.checkpoint(partitions, states=closed, in_listener=in_listener)
        for tp in partitions:
            for sid in self.partition_streams.pop(tp, set()):
                self.inputs.pop(sid, None)
                self.pipeline.streams.pop(sid, None)
            self.positions.pop(tp, None)
            self.owned.discard(tp)
            self._dirty.discard(tp)
            self._shots.pop(tp, None)
            self.last_lag.pop(tp.partition, None)
            if self.metrics is not None:
                try:
                    self.metrics.lag.remove(str(tp.partition))
                except KeyError:  # never reported
                    pass
        log.info("partitions %s %s", sorted(tp.partition for tp in partitions), "lost" if lost else "revoked")

    def assign(self, partitions: list[Any], *, rewinding: bool = False) -> None:
        assert self.checkpoints is not None
        self.checkpoints.refresh()
        for tp in partitions:
            self.owned.add(tp)
            key = self._checkpoint_key(tp)
            saved = self.checkpoints.latest.get(key)
            self._shots[tp] = {k for k in self.checkpoints.shots if is_shot_of(k, key)}
            if saved is None:
                self._tombstone_shots(tp, set(self._shots[tp]))  # left by a worker that never checkpointed
                if rewinding:  # (in the listener the consumer resumes at the committed offset by itself)
                    committed = self.consumer.committed(tp)
                    if committed is None:
                        self.consumer.seek_to_beginning(tp)
                    else:
                        self.consumer.seek(tp, committed)
                log.info("partition %d: no checkpoint; starting at the committed offset", tp.partition)
                continue
            try:
                offset = self._restore(tp, saved)
            except (ValueError, KeyError, TypeError) as exc:  # damaged, or written by an incompatible version
                log.error("partition %d: the checkpoint cannot be restored (%s: %s); starting fresh at the committed "
                          "offset (track ids may repeat)", tp.partition, type(exc).__name__, exc)
                for sid in self.partition_streams.pop(tp, set()):
                    self.pipeline.streams.pop(sid, None)
                    self.inputs.pop(sid, None)
                continue
            self.positions[tp] = offset
            self.consumer.seek(tp, offset)
            log.info("partition %d: resumed at offset %d with %d streams (checkpoint by %s)", tp.partition,
                     saved["offset"], len(saved["streams"]), saved["worker"])

    def _restore(self, tp: Any, saved: dict[str, Any]) -> int:
        """Restore a partition's streams from its checkpoint; returns the offset to resume at."""
        assert self.checkpoints is not None
        saved = copy.deepcopy(saved)  # (the reader's copy keeps its references)
        refs = shot_refs(saved)
        missing = attach_shots(saved, self.checkpoints.shots)
        if missing:
            log.warning("partition %d: %d best shots of the checkpoint are missing from %s; those tracks go on "
                        "without a thumbnail", tp.partition, len(missing), self.config.state_topic)
        self._tombstone_shots(tp, self._shots[tp] - refs)  # left by a crash after the checkpoint
        offset = int(saved["offset"])
        for sid, state in saved["streams"].items():
            self.partition_streams[tp].add(sid)
            if state is not None:
                self.pipeline.restore_stream(sid, state)
        for sid, numbering in saved.get("inputs", {}).items():
            self.partition_streams[tp].add(sid)
            source = self._input(sid)
            source.index_offset, source.last_capture_ms = int(numbering["index_offset"]), int(numbering["last_capture_ms"])
        return offset

    # --- gallery erasure --------------------------------------------------------------------------

    def retract(self, identity_id: str) -> None:
        """An identity was erased: forget it in live tracks; retract what named it."""
        self.pipeline.forget_identity(identity_id)
        streams = self.publisher.retract(identity_id, self.worker_id)
        self.stats.retractions += streams
        log.info("identity %s erased: retracted events on %d streams", identity_id, streams)
