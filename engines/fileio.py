"""Durable file helpers shared by the model store and the gallery."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from engines.errors import InvalidImageError

_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_file_mode(fd: int) -> None:
    """Give a mkstemp file (0600) the mode a plain open() would have (0666 less the umask)."""
    os.fchmod(fd, 0o666 & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        plain_file_mode(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MAX_FILE_BYTES = 200 * 2**20
"""Image files above this size are refused unread (a 4096 x 4096 PNG is at most about 64 MB)."""


def read_image_bytes(path: Path | str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file. A missing file, a folder, a device or pipe (``/dev/zero``
    would never end), an unreadable file or one over ``max_bytes`` raises
    :class:`InvalidImageError` naming the path."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidImageError(f"{path}: not a regular file")
            if info.st_size > max_bytes:
                raise InvalidImageError(f"{path}: {info.st_size} bytes, more than the limit of {max_bytes}")
            data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise InvalidImageError(f"{path}: a folder, not an image file") from None
    except FileNotFoundError:
        raise InvalidImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InvalidImageError(f"{path}: more than the limit of {max_bytes} bytes")
    return data
