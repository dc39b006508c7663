"""Where inference runs: the one CPU/GPU decision and the backends built on it.

Contract: :func:`select_device` decides once per process (``runtime.force_cpu`` is the
only way to force CPU on a GPU machine); :class:`EngineRuntime` carries the decision,
loads every model with it (:meth:`EngineRuntime.load` returns an
:class:`InferenceBackend`: named numpy tensors in, named numpy tensors out) and refuses or
reports a backend that loaded another device than planned. Nothing here imports CUDA
libraries at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.runtime.backend import BackendInfo, InferenceBackend
    from engines.runtime.device import Device, DevicePlan, select_device
    from engines.runtime.engine import EngineRuntime, available_cpus

__all__ = [
    "BackendInfo",
    "Device",
    "DevicePlan",
    "EngineRuntime",
    "InferenceBackend",
    "available_cpus",
    "select_device",
]

__getattr__ = lazy_exports(__name__, {
    "BackendInfo": "engines.runtime.backend",
    "Device": "engines.runtime.device",
    "DevicePlan": "engines.runtime.device",
    "EngineRuntime": "engines.runtime.engine",
    "InferenceBackend": "engines.runtime.backend",
    "available_cpus": "engines.runtime.engine",
    "select_device": "engines.runtime.device",
})
