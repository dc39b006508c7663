"""Exact, pickle-free snapshots of a stream's pipeline state (tracker, tracks, schedules).

The Kafka worker checkpoints every partition's streams with its committed offset, so a
worker that takes a partition over (after a crash or a rebalance) continues with the
same tracks, ids and schedules and reproduces the results a single uninterrupted run
gives. Arrays keep their dtype and bytes (base64); floats go through JSON's shortest
round-trip representation, so a restored state is bit-identical.
"""

from __future__ import annotations

import base64
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
