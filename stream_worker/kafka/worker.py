"""The Kafka worker: frames topic in, result topics out, at least once.

One consumer in the worker group reads the frames topic (keyed by stream id, so a camera
lives on one partition and one worker at a time); each poll's records are decoded per
stream (:mod:`stream_worker.kafka.ingest`), run through the pipeline with frames of
different streams batched together, and published (``acks=all``) to the result topics.
Each owned partition is one :class:`~stream_worker.kafka.partition.PartitionState`.

Delivery and state:

- Checkpoints: every ``checkpoint_interval_ms`` (and when partitions are revoked) the
  worker waits until the broker has acknowledged every result so far, commits the input
  offsets, and then writes each partition's pipeline state with that offset to the
  compacted state topic (:mod:`stream_worker.kafka.checkpoints`). A worker that is given
  the partition (after a crash, or a rebalance) restores that state and resumes at that
  offset, so the replayed frames produce the same messages with the same event ids.
- Failures are decided in one place (:func:`engines.errors.classify`):

  - the input's fault (a malformed message; a frame the pipeline refuses as bad input) goes
    to the dead-letter topic with the original key, value and headers and a reason, and its
    offset is committed like any other;
  - anything else (a model or device fault, a broken gallery, the broker, out of memory) is
    never dead-lettered: the worker goes back to every partition's last checkpoint (nothing
    is committed past the last acknowledged result), ``/health`` turns ``failing`` (503),
    and it retries with exponential backoff until the fault clears. Errors that retrying
    cannot fix (configuration, installation, a damaged gallery) stop the worker without
    committing, so its partitions go to the rest of the group.
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
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engines.errors import Failure, PipelineFailedError, classify
from gallery.gallery import Gallery
from stream_worker.config import KafkaConfig
from stream_worker.kafka.changelog import GalleryFollower
from stream_worker.kafka.checkpoints import CheckpointStore
from stream_worker.kafka.client import ensure_topics, make_consumer, make_producer
from stream_worker.kafka.ingest import DeadLetters, Ingest, IngestStats, Pending, PendingFrames
from stream_worker.kafka.partition import PartitionState
from stream_worker.kafka.publish import KafkaPublisher
from stream_worker.local.sinks import Sink
from stream_worker.messages.state import PartitionCheckpoint, StreamCheckpoint, attach_shots, shot_refs
from stream_worker.metrics import WorkerMetrics
from stream_worker.pipeline.face_pipeline import FacePipeline, FrameOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class KafkaWorkerOptions:
    max_pixels: int = 40_000_000
    """Decoded frames above this many pixels are dead letters."""
    idle_exit_ms: int = 0
    """Stop after this long without input while owning partitions (batch jobs, tests); 0: run
    until stopped."""


@dataclass
class KafkaWorkerStats(IngestStats):
    frames: int = 0
    checkpoints: int = 0
    rebalances: int = 0
    rewinds: int = 0
    retractions: int = 0
    failures: int = 0
    """Pipeline or delivery failures that were not the input's fault (each retried)."""

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "frames": self.frames, "dead_letters": self.dead_letters,
                "duplicates": self.duplicates, "checkpoints": self.checkpoints, "rebalances": self.rebalances,
                "rewinds": self.rewinds, "retractions": self.retractions, "failures": self.failures}


class SystemFault(Exception):
    """Raised inside the poll loop for a failure that is not the input's fault."""

    def __init__(self, failure: Failure, cause: BaseException, where: str) -> None:
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")
        self.failure = failure
        self.cause = cause


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
        self.sinks = list(sinks)
        self.stats = KafkaWorkerStats()
        self.worker_id = config.client_name
        self.partitions: dict[Any, PartitionState] = {}
        """Every owned partition's state, by TopicPartition."""
        self._last_checkpoint = time.monotonic()
        self._last_loop: float | None = None
        """When the poll loop last turned (None before its first turn), for :meth:`health`."""
        self._failing: str | None = None
        """The failure being retried (None while healthy)."""
        self._failed_in_a_row = 0
        self.producer: Any = None
        self.publisher: KafkaPublisher | None = None
        self.consumer: Any = None
        self.checkpoints: CheckpointStore | None = None
        self.follower: GalleryFollower | None = None
        self.ingest: Ingest | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if cfg.create_topics:
            ensure_topics(cfg)
        self.producer = make_producer(cfg)
        self.publisher = KafkaPublisher(self.producer, cfg)
        dead_letters = DeadLetters(self.publisher, cfg, self.worker_id, self.stats, self.metrics)
        self.ingest = Ingest(cfg, dead_letters, self.stats, max_pixels=self.options.max_pixels,
                             last_frame=self.pipeline.last_frame)
        self.checkpoints = CheckpointStore(cfg, self.publisher, self.worker_id)
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
        assert self.ingest is not None
        idle_since = time.monotonic()
        fatal: SystemFault | None = None
        try:
            while not stop.is_set():
                self._last_loop = time.monotonic()
                if self.follower is not None:
                    self.follower.poll()
                batch = self.consumer.poll(timeout_ms=200, max_records=self.ingest.max_records())
                if batch or not self.partitions:  # idle time counts once the group has given us partitions
                    idle_since = time.monotonic()
                if batch:
                    try:
                        self._handle(batch)
                    except SystemFault as fault:
                        if fault.failure is Failure.FATAL:
                            fatal = fault
                            break
                        self._back_off(fault, stop)
                        continue
                    self._report_lag()
                elif self.options.idle_exit_ms and time.monotonic() - idle_since > self.options.idle_exit_ms / 1000:
                    log.info("no input for %d ms: stopping", self.options.idle_exit_ms)
                    break
                due = time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval_ms / 1000
                dirty = [tp for tp, p in self.partitions.items() if p.dirty]
                if due and dirty:
                    self.checkpoint(sorted(dirty))
        finally:
            self.close(leave_cleanly=fatal is None)
        if fatal is not None:
            raise PipelineFailedError(f"stopped without committing past the last acknowledged result: {fatal}") \
                from fatal.cause
        return self.stats

    def _back_off(self, fault: SystemFault, stop: threading.Event) -> None:
        """A failure that is not the input's fault: back to the last checkpoint of every
        partition (nothing committed past it), unhealthy meanwhile, then retry."""
        self.stats.failures += 1
        self._failed_in_a_row += 1
        self._failing = str(fault)
        if self.metrics is not None:
            self.metrics.failures.inc()
        cfg = self.config
        wait_ms = min(cfg.retry_backoff_min_ms * 2 ** (self._failed_in_a_row - 1), cfg.retry_backoff_max_ms,
                      cfg.max_poll_interval_ms // 2)  # keep the group membership while waiting
        log.error("%s; not the input's fault: back to the last checkpoint, retrying in %.1f s", fault, wait_ms / 1000,
                  exc_info=fault.cause)
        self.rewind()
        stop.wait(wait_ms / 1000)

    def health(self) -> dict[str, Any]:
        """The /health report. ``status`` is ``starting`` before the poll loop's first turn
        (models load, the changelog replays), ``ok`` while it turns, ``failing`` while a
        failure that is not the input's fault is being retried, and ``stalled`` when the loop
        has not turned for :meth:`stall_after_s`. The metrics server answers 503 for anything
        but ``ok``, so a liveness probe restarts a stalled or persistently failing worker."""
        since = None if self._last_loop is None else time.monotonic() - self._last_loop
        if since is None:
            status = "starting"
        elif since > self.stall_after_s():
            status = "stalled"
        else:
            status = "failing" if self._failing else "ok"
        return {"status": status, "seconds_since_poll": None if since is None else round(since, 3),
                "failure": self._failing, "partitions": sorted(tp.partition for tp in self.partitions),
                "lag": {tp.partition: p.lag for tp, p in self.partitions.items() if p.lag is not None},
                **self.stats.to_json()}

    def stall_after_s(self) -> float:
        """The longest a healthy loop goes without turning: a flush that waits out a broker
        outage (``delivery_timeout_ms``) plus one poll's work (kept within
        ``max_poll_interval_ms``). A hung worker's partitions move to the rest of the group
        after ``max_poll_interval_ms`` anyway; this only decides when to restart it."""
        return (self.config.delivery_timeout_ms + self.config.max_poll_interval_ms) / 1000

    def _report_lag(self) -> None:
        for tp, partition in self.partitions.items():
            high = self.consumer.highwater(tp)
            if high is not None and partition.position is not None:
                partition.lag = max(0, high - partition.position)
                if self.metrics is not None:
                    self.metrics.lag.labels(str(tp.partition)).set(partition.lag)

    def close(self, *, leave_cleanly: bool = True) -> None:
        """Leave: cleanly (end the tracks, publish, commit, checkpoint), or after a fatal
        failure without publishing or committing anything more."""
        if self.consumer is not None:
            try:
                if leave_cleanly:
                    self.revoke(list(self.partitions))
                else:
                    self._drop(list(self.partitions))
            finally:
                self.consumer.close(autocommit=False)
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

    # --- input and pipeline -----------------------------------------------------------------

    def _handle(self, batch: dict[Any, list[Any]]) -> None:
        assert self.ingest is not None
        try:
            pending = self.ingest.batch(self.partitions, batch)
            self._process(pending)
        except SystemFault:
            raise
        except Exception as exc:  # publishing, decoding: whatever is not the input's fault
            raise SystemFault(classify(exc), exc, "handling a poll") from exc
        self._failing = None
        self._failed_in_a_row = 0

    def _process(self, pending: PendingFrames) -> None:
        while any(pending.values()):
            batch = [queue.popleft() for queue in pending.values() if queue]
            try:
                outputs = self.pipeline.process([p.frame for p in batch])
            except Exception as exc:  # the step left every stream as it was (atomic)
                failure = classify(exc)
                if failure is not Failure.SKIP:
                    where = ", ".join(f"{p.frame.stream_id} frame {p.frame.index}" for p in batch)
                    raise SystemFault(failure, exc, f"pipeline on {where}") from exc
                if len(batch) == 1:  # the input's fault: this frame is a dead letter
                    item = batch[0]
                    assert self.ingest is not None
                    self.ingest.dead_letters.send(item.record, "pipeline",
                                                  f"frame {item.frame.index}: {type(exc).__name__}: {exc}")
                    continue
                for item in reversed(batch):  # one at a time, to find the bad frame
                    pending[item.frame.stream_id].appendleft(item)
                self._process_singly(pending)
                continue
            for output in outputs:
                self._emit(output)

    def _process_singly(self, pending: PendingFrames) -> None:
        for queue in pending.values():
            if queue:
                item: Pending = queue.popleft()
                self._process({item.frame.stream_id: collections.deque([item])})

    def _emit(self, output: FrameOutput) -> None:
        assert self.publisher is not None
        self.publisher.frame(output)
        for sink in self.sinks:
            sink.write(output)
        self.stats.frames += 1
        if self.metrics is not None:
            self.metrics.count_output(output)

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, partitions: Sequence[Any], *, states: dict[str, StreamCheckpoint | None] | None = None,
                   in_listener: bool = False) -> bool:
        """Flush, commit and write the state of ``partitions`` (their streams' current
        state, or ``states`` where given); True when all three happened.

        ``in_listener``: called from the rebalance listener, which runs on the consumer's
        network thread where kafka-python cannot block on the consumer: the commit is sent
        asynchronously (ahead of the group's re-join on the same connection) and the state
        is written without waiting for it; the group still holds this generation then."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assert self.publisher is not None and self.checkpoints is not None
        self._last_checkpoint = time.monotonic()
        if not self.publisher.flush():
            if not in_listener:  # (a revoked partition's next owner resumes from its last checkpoint)
                self.rewind()
            return False
        owned = [self.partitions[tp] for tp in partitions if tp in self.partitions]
        offsets = {p.tp: OffsetAndMetadata(p.position, "", -1) for p in owned if p.position is not None}
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
        checkpoints = {}
        for tp, offset in offsets.items():
            partition = self.partitions[tp]
            streams = {sid: states[sid] if states is not None and sid in states
                       else self.pipeline.stream_checkpoint(sid) for sid in sorted(partition.streams)}
            checkpoints[tp] = (partition, self.checkpoints.state(partition, offset.offset, streams))
        if not self.checkpoints.write(checkpoints):
            return False
        for partition, _ in checkpoints.values():
            partition.dirty = False
        self.stats.checkpoints += 1
        if self.metrics is not None:
            self.metrics.checkpoints.inc()
        return True

    def rewind(self) -> None:
        """Go back to every owned partition's last checkpoint (results could not be delivered,
        or the pipeline failed for a reason that is not the input's)."""
        self.stats.rewinds += 1
        owned = list(self.partitions)
        log.warning("rewinding partitions %s to their last checkpoints", sorted(tp.partition for tp in owned))
        self._drop(owned)
        self.assign(owned, rewinding=True)

    def _drop(self, partitions: Sequence[Any]) -> None:
        """Forget partitions and their streams' pipeline state, publishing nothing."""
        for tp in partitions:
            partition = self.partitions.pop(tp, None)
            if partition is None:
                continue
            for sid in partition.streams:
                self.pipeline.drop_stream(sid)
            if self.metrics is not None:
                try:
                    self.metrics.lag.remove(str(tp.partition))
                except KeyError:  # never reported
                    pass

    # --- rebalance --------------------------------------------------------------------------------

    def revoke(self, partitions: list[Any], *, lost: bool = False, in_listener: bool = False) -> None:
        owned = [self.partitions[tp] for tp in partitions if tp in self.partitions]
        if not owned:
            return
        assert self.publisher is not None
        self.stats.rebalances += 1
        if self.metrics is not None:
            self.metrics.rebalances.inc()
        closed: dict[str, StreamCheckpoint | None] = {}
        for partition in owned:
            for sid in sorted(partition.streams):
                closed[sid] = self.pipeline.stream_checkpoint(sid, closed=True)
                if lost:  # someone else owns it now: publish nothing
                    continue
                events, thumbnails = self.pipeline.end_stream(sid)
                self.publisher.events(sid, events, thumbnails)
                for sink in self.sinks:
                    sink.write_events(sid, events, thumbnails)
        if not lost:
            self.checkpoint([p.tp for p in owned], states=closed, in_listener=in_listener)
        self._drop([p.tp for p in owned])
        log.info("partitions %s %s", sorted(p.tp.partition for p in owned), "lost" if lost else "revoked")

    def assign(self, partitions: list[Any], *, rewinding: bool = False) -> None:
        assert self.checkpoints is not None
        self.checkpoints.refresh()
        for tp in partitions:
            partition = self.partitions[tp] = PartitionState(tp, shots=self.checkpoints.shot_keys(tp))
            saved = self.checkpoints.saved(tp)
            if saved is None:
                self.checkpoints.tombstone(partition, set(partition.shots))  # left by a worker that never checkpointed
                if rewinding:  # (in the listener the consumer resumes at the committed offset by itself)
                    committed = self.consumer.committed(tp)
                    if committed is None:
                        self.consumer.seek_to_beginning(tp)
                    else:
                        self.consumer.seek(tp, committed)
                log.info("partition %d: no checkpoint; starting at the committed offset", tp.partition)
                continue
            try:
                checkpoint = self._restore(partition, saved)
            except (ValueError, KeyError, TypeError) as exc:  # damaged, or written by an incompatible version
                log.error("partition %d: the checkpoint cannot be restored (%s: %s); starting fresh at the committed "
                          "offset (track ids may repeat)", tp.partition, type(exc).__name__, str(exc)[:500])
                for sid in partition.streams:
                    self.pipeline.drop_stream(sid)
                partition.streams.clear()
                continue
            partition.position = checkpoint.offset
            self.consumer.seek(tp, checkpoint.offset)
            log.info("partition %d: resumed at offset %d with %d streams (checkpoint by %s)", tp.partition,
                     checkpoint.offset, len(checkpoint.streams), checkpoint.worker)

    def _restore(self, partition: PartitionState, saved: dict[str, Any]) -> PartitionCheckpoint:
        """Restore a partition's streams from its checkpoint (checked against its model first:
        a damaged one raises ``ValueError`` before anything is restored)."""
        assert self.checkpoints is not None
        saved = copy.deepcopy(saved)  # (the store's copy keeps its references)
        refs = shot_refs(saved)
        missing = attach_shots(saved, self.checkpoints.shots)
        checkpoint = PartitionCheckpoint.model_validate(saved)
        if missing:
            log.warning("partition %d: %d best shots of the checkpoint are missing from %s; those tracks go on "
                        "without a thumbnail", partition.tp.partition, len(missing), self.config.state_topic)
        self.checkpoints.tombstone(partition, partition.shots - refs)  # left by a crash after the checkpoint
        for sid, state in checkpoint.streams.items():
            partition.stream(sid, max_pixels=self.options.max_pixels)
            if state is not None:
                self.pipeline.restore_stream(sid, state)
        for sid, numbering in checkpoint.inputs.items():
            source = partition.stream(sid, max_pixels=self.options.max_pixels)
            source.index_offset, source.last_capture_ms = numbering.index_offset, numbering.last_capture_ms
        return checkpoint

    # --- gallery erasure --------------------------------------------------------------------------

    def retract(self, identity_id: str) -> None:
        """An identity was erased: forget it in live tracks; retract what named it."""
        assert self.publisher is not None
        self.pipeline.forget_identity(identity_id)
        streams = self.publisher.retract(identity_id, self.worker_id)
        self.stats.retractions += streams
        log.info("identity %s erased: retracted events on %d streams", identity_id, streams)
