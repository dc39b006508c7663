"""The engine runtime: one per process, built at start-up and passed down.

It is the one place that decides CPU vs GPU (through :func:`engines.runtime.device.select_device`),
loads every model with that decision, reports what each backend really loaded, and owns
the small worker pool that model stages use to split work.

On CPU, small networks (MTCNN's, per-face heads) use cores better when each call is
single-threaded and a stage splits its work (pyramid levels, crop batches) into as many
concurrent calls as there are cores: operator-level threading syncs on every layer and
leaves a core idle while host code (resizing, cropping, NMS) runs. Measured on 2 cores,
MTCNN on a 640x360 frame: 33.7 ms with 2 intra-op threads, 28.2 ms with 2 concurrent
single-threaded calls. On a GPU one caller feeds the device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from engines.config import RuntimeConfig
from engines.runtime.backend import BackendInfo, InferenceBackend
from engines.runtime.device import Device, DevicePlan, select_device

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


class EngineRuntime:
    """Device decision, model loading and the worker pool, shared by every model."""

    def __init__(self, config: RuntimeConfig | None = None, *, plan: DevicePlan | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.plan = plan or select_device(self.config.device, force_cpu=self.config.force_cpu)
        if self.config.workers:
            self.workers = self.config.workers
        else:
            self.workers = 1 if self.plan.device is Device.CUDA else available_cpus()
        self.loaded: list[BackendInfo] = []
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="engine") if self.workers > 1 else None
        log.info(
            "engine runtime: device %s, %d worker(s), %d intra-op thread(s) per call",
            self.plan.describe(), self.workers, self.config.intra_op_threads,
        )

    def load(self, model_path: Path, *, name: str) -> InferenceBackend:
        from engines.runtime.ort import OrtBackend

        backend = OrtBackend(model_path, name=name, plan=self.plan, runtime=self.config)
        self.loaded.append(backend.info)
        log.info("loaded %s", backend.info.describe())
        return backend

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[function(item) for item in items]``, run on the worker pool."""
        items = list(items)
        if self._pool is None or len(items) <= 1:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))

    def submit(self, function: Callable[[T], R], item: T) -> Future[R]:
        """Start ``function(item)`` on the worker pool (inline when there is no pool)."""
        if self._pool is not None:
            return self._pool.submit(function, item)
        future: Future[R] = Future()
        try:
            future.set_result(function(item))
        except BaseException as exc:  # delivered by future.result(), as from a pool
            future.set_exception(exc)
        return future

    def describe(self) -> dict[str, object]:
        """For health output: the device decision and what every backend loaded."""
        return {
            "device": self.plan.device.value,
            "device_reason": self.plan.reason,
            "requested": self.plan.requested.value,
            "workers": self.workers,
            "intra_op_threads": self.config.intra_op_threads,
            "backends": [info.describe() for info in self.loaded],
            "fallback": any(info.fallback for info in self.loaded),
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> EngineRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
