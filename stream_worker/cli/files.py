"""Paths from the command line, checked before any work starts.

Inputs must be regular files (not folders, devices or pipes: ``/dev/zero`` would never end)
of a bounded size; outputs go into folders that exist and can be written. The messages name
the path and what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engines.errors import ConfigError
from engines.fileio import MAX_FILE_BYTES, read_image_bytes

__all__ = ["read_image_bytes", "readable_file", "writable_dir", "writable_file"]


def readable_file(path: Path, what: str, *, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """A regular file that can be read, or :class:`ConfigError`."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file {path}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot use {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"{what}: {path} is {kind}")
    if info.st_size > max_bytes:
        raise ConfigError(f"{what}: {path} is {info.st_size} bytes, more than the limit of {max_bytes}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what}: {path} cannot be read (permissions)")
    return path


def writable_file(path: Path, what: str) -> Path:
    """A file path whose folder exists and can be written (the file itself may not exist)."""
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; name a file")
    writable_dir(path.parent if str(path.parent) else Path("."), what, create=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} cannot be written (permissions)")
    return path


def writable_dir(path: Path, what: str, *, create: bool) -> Path:
    """A folder that exists (or, with ``create``, is made in a folder that does) and can be
    written."""
    if not path.exists():
        if not create or not path.parent.is_dir():
            raise ConfigError(f"{what}: the folder {path if not create else path.parent} does not exist")
        try:
            path.mkdir()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot create the folder {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise ConfigError(f"{what}: {path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: the folder {path} cannot be written (read-only or permissions)")
    return path
