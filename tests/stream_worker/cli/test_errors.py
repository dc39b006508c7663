"""What a user sees when the input or the command is wrong: a clear error on one line, the
exit status the README states (1: some input could not be processed; 2: the command, its
configuration or the installation; 130: interrupted), and never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engines.store.model_store import ModelStore
from tests.stream_worker.cli.test_cli import FACESTREAM, run

CLIP = "face_recognition/examples/short_hamilton_clip.mp4"
LIN = "face_recognition/examples/lin-manuel-miranda.png"


def no_traceback(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def people(model_store: ModelStore, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("people") / "people.db"
    done = run(["gallery", "--db", str(db), "enrol", "--id", "lin", str(faces_dir / LIN)], model_store.home)
    assert done.returncode == 0, done.stderr
    return db


def gallery(db: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return no_traceback(run(["gallery", "--db", str(db), *args], home))


def test_gallery_search_on_a_missing_file_a_folder_or_a_bad_image_exits_1(people: Path, model_store: ModelStore,
                                                                          tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a JPEG")
    for image, message in ((tmp_path / "missing.jpg", "no such file"), (tmp_path, "a folder, not an image file"),
                           (garbage, "not a decodable image")):
        result = gallery(people, model_store.home, "search", str(image))
        assert result.returncode == 1, result.stderr
        assert message in json.loads(result.stdout)["error"] and message in result.stderr


@pytest.mark.parametrize("args, message", [
    (["enrol", "--id", "", "x.jpg"], "an identity id must not be blank"),
    (["enrol", "--id", "a\u202eb", "x.jpg"], "format character"),
    (["enrol", "--id", "ok", "--meta", '{"a": NaN}', "x.jpg"], "metadata contains NaN"),
    (["search", "x.jpg", "-k", "0"], "-k: a count must be in [1, 10000], got '0'"),
    (["import", "/no/such/export.jsonl"], "the export to import: no such file /no/such/export.jsonl"),
    (["export", "--out", "/no/such/dir/x.jsonl"], "the export: the folder /no/such/dir does not exist"),
    (["calibrate", "--pairs", "/no/pairs.csv"], "the pairs file: no such file /no/pairs.csv"),
])
def test_bad_gallery_arguments_exit_2_before_anything_runs(people: Path, model_store: ModelStore, args: list[str],
                                                           message: str) -> None:
    before = people.read_bytes()
    result = gallery(people, model_store.home, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert people.read_bytes() == before


def test_a_bad_import_file_exits_2_and_imports_nothing(people: Path, model_store: ModelStore, tmp_path: Path) -> None:
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "facestream-gallery-templates/1", "dim": 128}\n[]\n')
    for file, message in ((binary, "not a text file"), (bad, "import line 2: neither an identity nor a template")):
        result = gallery(people, model_store.home, "import", str(file))
        assert result.returncode == 2 and message in result.stderr
    assert [json.loads(line)["id"] for line in gallery(people, model_store.home, "list").stdout.splitlines()] == ["lin"]


def test_analyze_dev_zero_is_refused_at_once(model_store: ModelStore) -> None:
    started = time.monotonic()
    result = no_traceback(run(["analyze", "--json", "/dev/zero"], model_store.home))
    assert result.returncode == 1 and "/dev/zero: not a regular file" in result.stderr
    assert json.loads(result.stdout)["error_type"] == "InvalidImageError"
    assert time.monotonic() - started < 120  # (it used to read forever)


def test_verify_refuses_a_threshold_that_is_not_a_similarity(model_store: ModelStore, faces_dir: Path) -> None:
    for threshold in ("nan", "1.5", "inf"):
        result = no_traceback(run(["verify", str(faces_dir / LIN), str(faces_dir / LIN), "--threshold", threshold],
                                  model_store.home))
        assert result.returncode == 2 and "--threshold: a cosine similarity must be in [-1, 1]" in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize("flag, target, message", [
    ("--out", "missing/out.jsonl", "--out: the folder {tmp}/missing does not exist"),
    ("--video-out", "missing/v.mp4", "--video-out: the folder {tmp}/missing does not exist"),
    ("--thumbnails", "missing/deeper/thumbs", "--thumbnails: the folder {tmp}/missing/deeper does not exist"),
    ("--thumbnails", "file.txt", "--thumbnails: {tmp}/file.txt is not a folder"),
    ("--out", ".", "--out: . is a folder; name a file"),
])
def test_run_checks_its_outputs_before_it_starts(model_store: ModelStore, faces_dir: Path, tmp_path: Path, flag: str,
                                                 target: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    path = target if target == "." else str(tmp_path / target)
    result = no_traceback(run(["run", "--source", str(faces_dir / CLIP), flag, path], model_store.home))
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr, result.stderr


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write: made read-only by its mode, or (as root, which
    ignores modes) a read-only file system the machine has."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    for candidate in (Path("/proc/sys"), Path("/sys/fs/cgroup")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    pytest.skip("running as root with no read-only folder to write into")


@pytest.mark.parametrize("flag, name", [("--out", "out.jsonl"), ("--video-out", "v.mp4"), ("--thumbnails", "t")])
def test_run_refuses_a_read_only_folder_before_it_starts(model_store: ModelStore, faces_dir: Path, read_only_dir: Path,
                                                         flag: str, name: str) -> None:
    result = no_traceback(run(["run", "--source", str(faces_dir / CLIP), flag, str(read_only_dir / name)],
                              model_store.home))
    assert result.returncode == 2, result.stderr
    expected = ("cannot create the folder" if flag == "--thumbnails"
                else f"{flag}: the folder {read_only_dir} cannot be written (read-only or permissions)")
    assert expected in result.stderr and not (read_only_dir / name).exists()


@pytest.mark.parametrize("sources, message", [
    (["a:b={clip}", "a_b={clip}"], "stream id 'a:b' is not valid"),
    (["..={clip}"], "stream id '..' is not valid"),
    (["cam={clip}", "cam={clip}"], "stream id 'cam' is given twice"),
])
def test_stream_ids_are_checked_and_never_collide(model_store: ModelStore, faces_dir: Path, tmp_path: Path,
                                                  sources: list[str], message: str) -> None:
    args = [a for s in sources for a in ("--source", s.format(clip=faces_dir / CLIP))]
    result = no_traceback(run(["run", *args, "--thumbnails", str(tmp_path / "t"), "--video-out",
                               str(tmp_path / "v.mp4")], model_store.home))
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob("*.mp4"))  # nothing written anywhere


def test_a_write_failure_mid_run_ends_the_run_cleanly(model_store: ModelStore, faces_dir: Path,
                                                      tmp_path: Path) -> None:
    """The JSON lines go to a pipe whose reader goes away once tracks have started (as a disk
    that fills up): the run stops, every live track still ends (its best shot reaches the
    thumbnails folder), and the summary says why."""
    assert FACESTREAM
    process = subprocess.Popen([FACESTREAM, "run", "--source", f"clip={faces_dir / CLIP}",
                                "--thumbnails", str(tmp_path / "thumbs")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home)})
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:
        if '"track_started"' in line:
            break
    process.stdout.close()  # the reader is gone: the next write fails
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert process.returncode == 2 and "the run stopped early: JsonLinesSink cannot write" in stderr
    summary = json.loads(next(line for line in stderr.splitlines() if line.startswith('{"summary"')))["summary"]
    assert "Broken pipe" in summary["stopped_by"] and summary["frames"] < 275
    assert list((tmp_path / "thumbs" / "clip").glob("track-*.jpg"))  # the live tracks were ended, not dropped


def test_ctrl_c_ends_every_track_and_exits_130(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    assert FACESTREAM
    out = tmp_path / "results.jsonl"
    process = subprocess.Popen([FACESTREAM, "run", "--source", f"clip={faces_dir / CLIP}", "--out", str(out)],
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home)})
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count('"track_started"') >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "no track started"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    started = {e["track_id"] for e in events if e.get("type") == "track_started"}
    ended = {e["track_id"] for e in events if e.get("type") == "track_ended"}
    assert started and started == ended  # the output is complete: every track that started has ended
    assert len([e for e in events if e["schema"] == "facestream.frame/2"]) < 275
