"""The one place that decides whether inference runs on CPU or on an NVIDIA GPU.

``runtime.force_cpu`` (``FACESTREAM__RUNTIME__FORCE_CPU=1``) is the only way to force CPU
on a GPU machine; every other path either uses the GPU that was asked for or fails loudly.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from enum import Enum

from engines.config import DeviceRequest
from engines.errors import BackendUnavailableError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class DevicePlan:
    """The decision, with the reason, as shown in logs and health output."""

    requested: DeviceRequest
    device: Device
    reason: str

    @property
    def strict(self) -> bool:
        """True when the user named the device: a runtime that loads another one is an error."""
        return self.requested is not DeviceRequest.AUTO

    def describe(self) -> str:
        return f"{self.device.value} (requested {self.requested.value}: {self.reason})"


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver. Creates no context."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _ort_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def select_device(requested: DeviceRequest | str, *, force_cpu: bool = False) -> DevicePlan:
    """Decide the device once, at start-up; raise when an explicit request cannot be met."""
    requested = DeviceRequest(requested)
    if force_cpu:
        plan = DevicePlan(requested, Device.CPU, "runtime.force_cpu is set")
    elif requested is DeviceRequest.CPU:
        plan = DevicePlan(requested, Device.CPU, "CPU requested")
    else:
        providers = _ort_providers()
        has_provider = CUDA_PROVIDER in providers
        gpus = cuda_device_count() if has_provider else 0
        if has_provider and gpus > 0:
            plan = DevicePlan(requested, Device.CUDA, f"{gpus} CUDA device(s), onnxruntime has {CUDA_PROVIDER}")
        elif requested is DeviceRequest.CUDA:
            missing = (
                f"onnxruntime offers only {providers}; install the 'gpu' extra (onnxruntime-gpu)"
                if not has_provider
                else "no CUDA device found by the driver"
            )
            raise BackendUnavailableError(
                f"device 'cuda' was requested but {missing}. Use --device cpu (or auto) to run on CPU."
            )
        else:
            why = "no CUDA device" if has_provider else f"onnxruntime has no {CUDA_PROVIDER}"
            plan = DevicePlan(requested, Device.CPU, why)
    log.info("inference device: %s", plan.describe())
    return plan
