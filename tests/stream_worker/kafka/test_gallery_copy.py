"""The consume worker's gallery copy (biometric data) lives where the operator says, and a
copy left behind by a killed worker is removed when the next worker starts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engines.errors import ConfigError
from stream_worker.kafka.gallery_copy import PREFIX, GalleryCopy

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from stream_worker.kafka.gallery_copy import GalleryCopy\n"
    "with GalleryCopy(Path(sys.argv[1])) as db:\n"
    "    db.write_bytes(b'templates')\n"
    "    print(db.parent, flush=True)\n"
    "    time.sleep(600)\n"
)


def holder(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    folder = Path(process.stdout.readline().strip())
    assert folder.parent == parent and (folder / "gallery.db").exists()
    return process, folder


def test_a_killed_workers_copy_is_removed_at_the_next_start_and_a_live_one_is_kept(tmp_path: Path) -> None:
    killed, left_behind = holder(tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert left_behind.exists()  # SIGKILL: nothing could clean up
    alive, live = holder(tmp_path)
    try:
        with GalleryCopy(tmp_path) as mine:
            assert not left_behind.exists()  # the dead worker's templates are gone
            assert live.exists() and (live / "gallery.db").exists()  # a running worker's copy is not touched
            assert mine.parent.name.startswith(PREFIX) and oct(mine.parent.stat().st_mode & 0o777) == "0o700"
        assert not mine.parent.exists()  # and this one's removed when it stops
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.wait()


def test_the_copy_goes_only_where_it_may(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gallery.copy_dir: .*missing is not a folder this worker can write"):
        with GalleryCopy(tmp_path / "missing"):
            pass
    assert not (tmp_path / "missing").exists()
