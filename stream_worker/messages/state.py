"""Exact, pickle-free snapshots of a stream's pipeline state (tracker, tracks, schedules).

The Kafka worker checkpoints every partition's streams with its committed offset, so a
worker that takes a partition over (after a crash or a rebalance) continues with the
same tracks, ids and schedules and reproduces the results a single uninterrupted run
gives. Arrays keep their dtype and bytes (base64); floats go through JSON's shortest
round-trip representation, so a restored state is bit-identical.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

STATE_FORMAT = "facestream.stream-state/1"


def pack_array(array: np.ndarray | None) -> dict[str, Any] | None:
    if array is None:
        return None
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def unpack_array(packed: dict[str, Any] | None) -> np.ndarray | None:
    if packed is None:
        return None
    dtype = np.dtype(packed["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in a checkpoint")
    return np.frombuffer(base64.b64decode(packed["data"]), dtype=dtype).reshape(packed["shape"]).copy()


def pack_bytes(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unpack_bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


# --- best shots beside the checkpoint ------------------------------------------------------------
#
# A partition checkpoint carries its tracks' whole state but their best-shot JPEGs. Each JPEG
# is a message of its own on the state topic, keyed by the checkpoint's key and the JPEG's
# digest, and the track refers to it by that key ("jpeg_ref"). So a best shot is written
# once, when it first appears in a checkpoint, rather than with every checkpoint.

SHOT_MARK = "/shot/"


def shot_key(checkpoint_key: str, jpeg: bytes) -> str:
    return f"{checkpoint_key}{SHOT_MARK}{hashlib.sha256(jpeg).hexdigest()[:32]}"


def is_shot_of(key: str, checkpoint_key: str) -> bool:
    return key.startswith(checkpoint_key + SHOT_MARK)


def _bests(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for stream in state.get("streams", {}).values():
        for track in (stream or {}).get("tracks", []):
            if track.get("best") is not None:
                yield track["best"]


def detach_shots(state: dict[str, Any], checkpoint_key: str) -> dict[str, bytes]:
    """Move every best-shot JPEG out of a partition checkpoint (in place) into a reference;
    returns the JPEGs by key."""
    shots = {}
    for best in _bests(state):
        jpeg = unpack_bytes(best.get("jpeg"))
        if jpeg is not None:
            key = shot_key(checkpoint_key, jpeg)
            shots[key] = jpeg
            best["jpeg"], best["jpeg_ref"] = None, key
    return shots


def shot_refs(state: dict[str, Any]) -> set[str]:
    """The best-shot keys a partition checkpoint refers to."""
    return {best["jpeg_ref"] for best in _bests(state) if best.get("jpeg_ref") is not None}


def attach_shots(state: dict[str, Any], shots: Mapping[str, bytes]) -> list[str]:
    """Put the referenced JPEGs back into a partition checkpoint (in place), as
    :meth:`TrackState.from_state` reads them; returns the references not found (those
    tracks go on without a thumbnail)."""
    missing = []
    for best in _bests(state):
        key = best.pop("jpeg_ref", None)
        if key is not None:
            jpeg = shots.get(key)
            if jpeg is None:
                missing.append(key)
            best["jpeg"] = pack_bytes(jpeg)
    return missing
