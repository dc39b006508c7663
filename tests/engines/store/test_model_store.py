"""The model cache: real fetches, checksums, failures and interruptions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from engines.errors import ChecksumMismatchError, ModelFetchError, ModelNotAvailableError
from engines.fileio import sha256_file
from engines.store.catalog import MTCNN
from engines.store.model_store import MANIFEST, BundleState, ModelStore

# A pip that can reach no index: real pip, real failure.
NO_NETWORK = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "2",
}


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.models_dir.glob(".mtcnn.*"))


def test_fetch_installs_a_verified_bundle_with_its_provenance(model_store: ModelStore) -> None:
    status = model_store.status(MTCNN)
    assert status.state is BundleState.OK
    manifest = json.loads((status.directory / MANIFEST).read_text())
    assert manifest["sources"][0]["requirement"] == "facenet-pytorch==2.6.0"
    assert manifest["sources"][0]["files"]["facenet_pytorch/data/pnet.pt"].startswith("a2a71925e0b9996a")
    for name in ("pnet.onnx", "rnet.onnx", "onet.onnx", "pnet.onnx.spec.json"):
        assert manifest["files"][name]["sha256"] == sha256_file(status.directory / name)
    assert max(manifest["conversion"]["max_abs_difference"].values()) <= 1e-4
    assert leftovers(model_store) == []


def test_fetch_is_idempotent(model_store: ModelStore) -> None:
    directory = model_store.bundle_dir(MTCNN)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    installed = model_store.fetch(MTCNN)  # verified, not downloaded or converted again
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    assert installed.directory == directory


def copy_of(store: ModelStore, tmp_path: Path, **kwargs: object) -> ModelStore:
    shutil.copytree(store.models_dir, tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    return ModelStore(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_corrupted_cache_is_detected_and_named(model_store: ModelStore, tmp_path: Path) -> None:
    store = copy_of(model_store, tmp_path, auto_fetch=False)
    onnx_file = store.bundle_dir(MTCNN) / "rnet.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    status = store.status(MTCNN)
    assert status.state is BundleState.CORRUPT
    assert "rnet.onnx fails its sha256 check" in status.detail
    with pytest.raises(ModelNotAvailableError, match=r"facestream models fetch --force"):
        store.ensure(MTCNN)


def test_missing_bundle_without_auto_fetch_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"Run `facestream models fetch`") as info:
        ModelStore(tmp_path, auto_fetch=False).ensure(MTCNN)
    assert str(tmp_path) in str(info.value)


def test_no_network_gives_a_clear_error_and_no_half_written_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    store = ModelStore(tmp_path)
    with pytest.raises(ModelFetchError, match="downloading facenet-pytorch==2.6.0 failed") as info:
        store.ensure(MTCNN)
    assert "network" in str(info.value) and info.value.retriable
    assert store.status(MTCNN).state is BundleState.MISSING
    assert leftovers(store) == []


def tampered_wheelhouse(wheelhouse: Path, tmp_path: Path) -> Path:
    """The real wheel with one weight file altered by one byte."""
    original = next(wheelhouse.glob("facenet_pytorch-*.whl"))
    folder = tmp_path / "tampered"
    folder.mkdir()
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(folder / original.name, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "facenet_pytorch/data/rnet.pt":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(item, data)
    return folder


def test_bad_checksum_is_refused_and_nothing_is_installed(wheelhouse: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home", find_links=tampered_wheelhouse(wheelhouse, tmp_path))
    with pytest.raises(ChecksumMismatchError, match=r"facenet_pytorch/data/rnet.pt .* expected bbb937de72efc9ef"):
        store.fetch(MTCNN)
    assert store.status(MTCNN).state is BundleState.MISSING
    assert leftovers(store) == []


def test_offline_fetch_from_a_wheel_folder(model_store: ModelStore, wheelhouse: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, find_links=wheelhouse)
    installed = store.fetch(MTCNN)
    assert store.status(MTCNN).state is BundleState.OK
    assert installed.manifest["sources"] == json.loads((model_store.bundle_dir(MTCNN) / MANIFEST).read_text())["sources"]


def test_killed_fetch_leaves_no_half_written_bundle(wheelhouse: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of a fetch: the bundle is absent, and the next fetch succeeds."""
    home = tmp_path / "home"
    env = {**os.environ, "FACESTREAM__MODELS__HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_worker.cli", "models", "fetch", "mtcnn", "--from", str(wheelhouse)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    models = home / "models"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(models.glob(".mtcnn.partial-*/mtcnn/*.onnx")):
        time.sleep(0.02)  # wait until conversion has begun writing model files
    assert proc.poll() is None, "the fetch ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ModelStore(home, find_links=wheelhouse)
    assert store.status(MTCNN).state is BundleState.MISSING
    assert list(models.glob(".mtcnn.partial-*")), "the kill should have hit a fetch in progress"
    store.fetch(MTCNN)
    assert store.status(MTCNN).state is BundleState.OK
    assert leftovers(store) == []


def test_specs_written_next_to_models_match_the_code(model_store: ModelStore) -> None:
    installed = model_store.ensure(MTCNN)
    for spec in MTCNN.models:
        assert installed.spec(spec) == spec
        assert installed.path(spec).is_file()
