"""Partition checkpoints on the compacted state topic, and the best shots beside them.

A checkpoint holds a partition's committed offset and the whole pipeline state of its
streams (:meth:`FacePipeline.stream_checkpoint`) plus their frame numbering, so a worker
that takes the partition over continues exactly. Best-shot JPEGs are messages of their own
(:func:`stream_worker.messages.state.detach_shots`): written once, acknowledged before the
first checkpoint that refers to them, and tombstoned once the partition's latest checkpoint
no longer does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from gallery.store import utc_now
from stream_worker.config import KafkaConfig
from stream_worker.kafka.client import TopicReader
from stream_worker.kafka.partition import PartitionState
from stream_worker.kafka.publish import KafkaPublisher
from stream_worker.kafka.wire import JSON_TYPE
from stream_worker.messages.state import (
    CHECKPOINT_FORMAT,
    SHOT_MARK,
    PartitionCheckpoint,
    StreamCheckpoint,
    detach_shots,
    is_shot_of,
)

log = logging.getLogger(__name__)

class CheckpointStore:
    """Reads the latest checkpoint per partition (and the best shots) from the state topic,
    and writes new ones through the worker's publisher."""

    def __init__(self, config: KafkaConfig, publisher: KafkaPublisher, worker_id: str) -> None:
        self.config = config
        self.publisher = publisher
        self.worker_id = worker_id
        self.reader = TopicReader(config, config.state_topic)
        self.latest: dict[str, dict[str, Any]] = {}
        self.shots: dict[str, bytes] = {}

    def key(self, tp: Any) -> str:
        return f"{self.config.group_id}/{tp.topic}/{tp.partition}"

    # --- reading --------------------------------------------------------------------------

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
            if isinstance(value, dict) and value.get("format") == CHECKPOINT_FORMAT:
                self.latest[key] = value

    def saved(self, tp: Any) -> dict[str, Any] | None:
        """The partition's latest checkpoint, as read by the last :meth:`refresh`."""
        return self.latest.get(self.key(tp))

    def shot_keys(self, tp: Any) -> set[str]:
        """Best shots on the state topic that belong to the partition's checkpoints."""
        key = self.key(tp)
        return {k for k in self.shots if is_shot_of(k, key)}

    # --- writing --------------------------------------------------------------------------

    def state(self, partition: PartitionState, offset: int,
              streams: Mapping[str, StreamCheckpoint | None]) -> PartitionCheckpoint:
        """A partition's checkpoint: its offset, its streams' pipeline state and numbering."""
        return PartitionCheckpoint(
            topic=partition.tp.topic, partition=partition.tp.partition, offset=offset, worker=self.worker_id,
            written_utc=utc_now(), streams=dict(streams),
            inputs={sid: partition.streams[sid].numbering() for sid in sorted(streams) if sid in partition.streams},
        )

    def write(self, checkpoints: Mapping[Any, tuple[PartitionState, PartitionCheckpoint]]) -> bool:
        """Write each partition's checkpoint after its new best shots are acknowledged, then
        tombstone the shots no checkpoint refers to any more; False if the broker did not
        acknowledge (the next owner then replays from the previous checkpoint, which stays
        exact)."""
        written: dict[Any, tuple[PartitionState, bytes | None, set[str]]] = {}
        new_shots = False
        for tp, (partition, checkpoint) in checkpoints.items():
            state = checkpoint.to_json()
            shots = detach_shots(state, self.key(tp))
            for key in sorted(shots.keys() - partition.shots):  # new best shots only
                self.publisher.send(self.config.state_topic, key, shots[key], [("content-type", b"image/jpeg")])
                partition.shots.add(key)
                new_shots = True
            written[tp] = (partition, fitting_checkpoint(state, self.config.max_message_bytes), set(shots))
        if new_shots and not self.publisher.flush():  # a checkpoint refers only to acknowledged shots
            log.warning("best shots not written; not checkpointing (the next owner replays from the previous one)")
            return False
        for tp, (_, encoded, _) in written.items():
            if encoded is not None:
                self.publisher.send(self.config.state_topic, self.key(tp), encoded,
                                    [("content-type", JSON_TYPE.encode())])
        if not self.publisher.flush():
            log.warning("checkpoint state not written; the next owner replays from the previous one")
            return False
        for partition, encoded, refs in written.values():
            if encoded is not None:  # the latest checkpoint no longer refers to these
                self.tombstone(partition, partition.shots - refs)
        return True

    def tombstone(self, partition: PartitionState, keys: set[str]) -> None:
        for key in sorted(keys):
            self.publisher.send(self.config.state_topic, key, None, [])
        partition.shots.difference_update(keys)

    def close(self) -> None:
        self.reader.close()


def fitting_checkpoint(state: dict[str, Any], max_bytes: int) -> bytes | None:
    """A checkpoint's JSON form (its best shots detached) encoded, or None when it exceeds ``max_bytes``
    (not written: the next owner replays from the previous checkpoint, which stays exact,
    only longer)."""
    encoded = json.dumps(state).encode()
    if len(encoded) <= max_bytes:
        return encoded
    log.error("partition %d: checkpoint of %d bytes exceeds max_message_bytes %d; not written (a take-over "
              "replays from the previous one)", state["partition"], len(encoded), max_bytes)
    return None
