"""ONNX Runtime backend (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.config import RuntimeConfig
from engines.errors import BackendError, ProviderMismatchError
from engines.runtime.backend import BackendInfo
from engines.runtime.device import CPU_PROVIDER, CUDA_PROVIDER, Device, DevicePlan
from engines.runtime.heap import trim_heap

log = logging.getLogger(__name__)


class OrtBackend:
    """One ONNX Runtime session. Checks after loading that the planned provider is active."""

    def __init__(self, model_path: Path, *, name: str, plan: DevicePlan, runtime: RuntimeConfig) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.intra_op_threads
        options.inter_op_num_threads = runtime.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle intra-op threads would otherwise spin between calls and take cores from the
        # host-side work (resizing, crops, NMS) that runs between network calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        requested = (CUDA_PROVIDER, CPU_PROVIDER) if plan.device is Device.CUDA else (CPU_PROVIDER,)
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=list(requested))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise BackendError(f"ONNX Runtime could not load {name} from {model_path}: {exc}") from exc
        loaded = tuple(self._session.get_providers())
        fallback = requested[0] not in loaded
        if fallback:
            message = (
                f"{name}: asked ONNX Runtime for {requested[0]} but it loaded {', '.join(loaded)} "
                "(check the CUDA and cuDNN libraries that onnxruntime-gpu needs)"
            )
            if plan.strict:
                raise ProviderMismatchError(message + "; set device to cpu to run on CPU on purpose")
            log.warning("%s; RUNNING ON CPU", message)
        threads = f"intra={runtime.intra_op_threads or 'default'}, inter={runtime.inter_op_threads or 'default'}"
        self.info = BackendInfo(
            model=name,
            backend="onnxruntime",
            backend_version=ort.__version__,
            device=Device.CPU.value if fallback or plan.device is Device.CPU else Device.CUDA.value,
            providers=loaded,
            requested_providers=requested,
            fallback=fallback,
            threads=threads,
        )
        self._run_options = ort.RunOptions()
        self._release_memory = bool(runtime.release_memory)
        if self._release_memory:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        log.debug("loaded %s", self.info.describe())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        try:
            values = self._session.run(names, dict(feeds), self._run_options)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise BackendError(f"{self.info.model} failed on inputs {shapes}: {exc}") from exc
        finally:
            if self._release_memory:
                # The arena gives its chunks back to malloc; without a trim glibc may keep
                # them resident (250 MB of 800 after a 3000x2000 photo, in some runs).
                trim_heap()
        return dict(zip(names, values))
