"""Device choice, provider verification and what the runtime reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from engines.config import DeviceRequest, RuntimeConfig
from engines.errors import BackendError, BackendUnavailableError, ProviderMismatchError
from engines.runtime.device import CUDA_PROVIDER, Device, DevicePlan, cuda_device_count, select_device
from engines.runtime.engine import EngineRuntime, available_cpus
from engines.runtime.ort import OrtBackend
from engines.store.catalog import MTCNN, RNET
from engines.store.model_store import ModelStore

HAS_CUDA = CUDA_PROVIDER in onnxruntime.get_available_providers() and cuda_device_count() > 0


def test_force_cpu_switch_wins_over_any_request() -> None:
    for request in DeviceRequest:
        plan = select_device(request, force_cpu=True)
        assert plan.device is Device.CPU and "runtime.force_cpu" in plan.reason


def test_cpu_request() -> None:
    assert select_device("cpu").device is Device.CPU


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a usable GPU")
def test_cuda_request_without_gpu_fails_loudly() -> None:
    with pytest.raises(BackendUnavailableError, match="device 'cuda' was requested but"):
        select_device("cuda")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a usable GPU")
def test_auto_falls_to_cpu_with_the_reason() -> None:
    plan = select_device("auto")
    assert plan.device is Device.CPU and not plan.strict
    assert plan.reason


def test_backend_reports_what_actually_loaded(model_store: ModelStore) -> None:
    path = model_store.ensure(MTCNN).path(RNET)
    backend = OrtBackend(path, name="rnet", plan=select_device("cpu"), runtime=RuntimeConfig())
    assert backend.info.providers == ("CPUExecutionProvider",)
    assert backend.info.device == "cpu" and not backend.info.fallback
    assert backend.input_names == ("image",)
    out = backend.run({"image": np.zeros((3, 24, 24, 3), np.float32)})
    assert out["face_prob"].shape == (3,) and out["reg"].shape == (3, 4)


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine where CUDA cannot load")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_silent_cpu_fallback_is_caught(model_store: ModelStore) -> None:
    """ONNX Runtime quietly runs on CPU when CUDA cannot load: explicit requests fail,
    automatic ones warn and say so in the report."""
    path = model_store.ensure(MTCNN).path(RNET)
    explicit = DevicePlan(DeviceRequest.CUDA, Device.CUDA, "test")
    with pytest.raises(ProviderMismatchError, match="asked ONNX Runtime for CUDAExecutionProvider"):
        OrtBackend(path, name="rnet", plan=explicit, runtime=RuntimeConfig())
    automatic = DevicePlan(DeviceRequest.AUTO, Device.CUDA, "test")
    backend = OrtBackend(path, name="rnet", plan=automatic, runtime=RuntimeConfig())
    assert backend.info.fallback and backend.info.device == "cpu"
    assert "FALLBACK" in backend.info.describe()


def test_bad_model_file_and_bad_inputs_raise_backend_errors(tmp_path, model_store: ModelStore) -> None:  # type: ignore[no-untyped-def]
    bogus = tmp_path / "broken.onnx"
    bogus.write_bytes(b"\x08\x07 not a model")
    with pytest.raises(BackendError, match="could not load broken"):
        OrtBackend(bogus, name="broken", plan=select_device("cpu"), runtime=RuntimeConfig())
    backend = OrtBackend(
        model_store.ensure(MTCNN).path(RNET), name="rnet", plan=select_device("cpu"), runtime=RuntimeConfig()
    )
    with pytest.raises(BackendError, match=r"rnet failed on inputs \{'image': \(1, 20, 20, 3\)\}"):
        backend.run({"image": np.zeros((1, 20, 20, 3), np.float32)})


def test_runtime_describe_and_map() -> None:
    with EngineRuntime(RuntimeConfig(device="cpu", workers=3)) as runtime:
        assert runtime.map(lambda x: x * x, range(7)) == [0, 1, 4, 9, 16, 25, 36]
        report = runtime.describe()
        assert report["device"] == "cpu" and report["workers"] == 3 and report["fallback"] is False


@pytest.mark.skipif(not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2, reason="needs taskset and 2 CPUs")
def test_one_model_worker_per_cpu_this_process_may_use() -> None:
    """The CPU count comes from the process's affinity (and a cgroup quota), not the machine's."""
    code = ("from engines.config import RuntimeConfig\n"
            "from engines.runtime.engine import EngineRuntime, available_cpus\n"
            "with EngineRuntime(RuntimeConfig(device='cpu')) as runtime:\n"
            "    print(available_cpus(), runtime.workers)\n")
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert pinned.stdout.split() == ["1", "1"]
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_import_engines_needs_no_cuda_and_no_torch() -> None:
    """`import engines` (and the detector) work on a CPU-only machine without importing torch."""
    code = (
        "import sys, engines, engines.mtcnn.detector, engines.multitask.network, engines.runtime.engine, engines.store.model_store\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'dlib' not in sys.modules, 'dlib imported'\n"
        "assert not any(m.startswith(('tensorrt', 'pycuda', 'cupy')) for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU with onnxruntime-gpu on this machine")
def test_cuda_backend_matches_cpu(model_store: ModelStore) -> None:
    path = model_store.ensure(MTCNN).path(RNET)
    gpu = OrtBackend(path, name="rnet", plan=select_device("cuda"), runtime=RuntimeConfig())
    cpu = OrtBackend(path, name="rnet", plan=select_device("cpu"), runtime=RuntimeConfig())
    assert gpu.info.providers[0] == CUDA_PROVIDER and not gpu.info.fallback
    x = np.random.default_rng(0).uniform(-1, 1, (16, 24, 24, 3)).astype(np.float32)
    for name, value in gpu.run({"image": x}).items():
        np.testing.assert_allclose(value, cpu.run({"image": x})[name], atol=1e-4)


def _resident_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc (Linux)")
def test_release_memory_gives_buffers_back_after_each_call(model_store: ModelStore, faces_dir) -> None:  # type: ignore[no-untyped-def]
    """A large photo leaves the detector holding its buffers, unless release_memory is on.
    Resident memory is read after trimming the C heap: what glibc keeps of freed numpy
    buffers (the pyramid, up to 300 MB in some runs) is not ONNX Runtime's to give back."""
    from engines.image import read_image_file
    from engines.mtcnn.detector import MTCNNDetector
    from engines.runtime.heap import trim_heap

    small = read_image_file(faces_dir / "face_recognition/examples/two_people.jpg")
    large = np.ascontiguousarray(np.tile(small, (4, 4, 1))[:2000, :3000])
    kept = {}
    for release in (False, True):
        detector = MTCNNDetector.create(runtime=EngineRuntime(RuntimeConfig(release_memory=release)),
                                        store=model_store)
        detector.detect(small)
        trim_heap()
        before = _resident_mib()
        assert len(detector.detect(large)) >= 2
        trim_heap()
        kept[release] = _resident_mib() - before
    assert kept[False] > 200 and kept[True] < kept[False] / 5, kept
