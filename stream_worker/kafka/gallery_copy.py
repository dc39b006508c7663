"""Where ``facestream consume`` keeps the gallery it replays from the changelog.

The copy holds biometric data (every template), so it lives where the operator says
(``gallery.copy_dir``; the system's temporary folder if unset), in a folder of its own that
only this user can read, locked for as long as the worker runs. The folder is removed when
the worker stops; a worker killed with SIGKILL cannot remove it, so every worker starting
under the same place first removes the copies whose owners are gone (their lock is free).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from engines.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "facestream-gallery-"
LOCK = ".owner.lock"
UNLOCKED_GRACE_S = 60.0
"""A copy folder without its lock file yet (its worker is starting) is left alone this long."""


def _free(lock_path: Path) -> bool:
    """True if nobody holds the lock (its owner is gone)."""
    try:
        with lock_path.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True
    except FileNotFoundError:
        return False


def remove_stale_copies(parent: Path) -> int:
    """Remove the gallery copies under ``parent`` that no running worker holds; returns how many."""
    removed = 0
    for folder in sorted(parent.glob(PREFIX + "*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock = folder / LOCK
        if lock.exists():
            stale = _free(lock)
        else:
            stale = time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.warning("removed %d gallery copies left under %s by workers that were killed", removed, parent)
    return removed


class GalleryCopy:
    """``with GalleryCopy(parent) as database_path:`` a private, locked folder for one
    worker's gallery copy, removed on exit."""

    def __init__(self, parent: Path | None) -> None:
        self.parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        self.folder: Path | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> Path:
        if not self.parent.is_dir() or not os.access(self.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"gallery.copy_dir: {self.parent} is not a folder this worker can write; the "
                              "gallery copy (biometric data) goes there")
        remove_stale_copies(self.parent)
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))  # mode 0700
        self._lock = (self.folder / LOCK).open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        log.info("gallery copy in %s", self.folder)
        return self.folder / "gallery.db"

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
