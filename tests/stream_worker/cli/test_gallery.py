"""`facestream gallery ...` end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.store.catalog import EMBEDDING_MODEL_ID
from engines.store.model_store import ModelStore
from gallery.defaults import DEFAULT_CALIBRATIONS
from tests.stream_worker.cli.test_cli import run

KNN = "face_recognition/examples/knn_examples"


def gallery(args: list[str], db: Path, home: Path):  # type: ignore[no-untyped-def]
    return run(["gallery", "--db", str(db), *args], home)


def test_enrol_search_list_show_remove(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    db, home = tmp_path / "people.db", model_store.home
    obama = [str(faces_dir / KNN / "train/obama/obama.jpg"), str(faces_dir / KNN / "train/obama/obama2.jpg")]
    enrol = gallery(["enrol", "--id", "obama", "--name", "Barack Obama", "--meta", '{"list": "demo"}', *obama], db, home)
    assert enrol.returncode == 0, enrol.stderr
    record = json.loads(enrol.stdout)
    assert record["identity"]["templates"] == {EMBEDDING_MODEL_ID: 2}
    assert [p["status"] for p in record["photos"]] == ["enrolled", "enrolled"]

    refused = gallery(["enrol", "--id", "biden", str(faces_dir / KNN / "train/biden/biden.jpg"),
                       str(faces_dir / "dlib/examples/faces/dogs.jpg")], db, home)
    assert refused.returncode == 1 and "no face found" in refused.stderr
    assert [p["status"] for p in json.loads(refused.stdout)["photos"]] == ["enrolled", "refused"]

    again = json.loads(gallery(["enrol", "--id", "obama", obama[0]], db, home).stdout)
    assert again["photos"][0]["status"] == "duplicate"

    search = json.loads(gallery(["search", str(faces_dir / KNN / "test/obama_and_biden.jpg"), "-k", "2"], db, home).stdout)
    best = {face["matches"][0]["identity_id"] for face in search["faces"] if face["matches"][0]["decision"] == "match"}
    assert best == {"obama", "biden"}

    listing = [json.loads(line) for line in gallery(["list"], db, home).stdout.splitlines()]
    assert [i["id"] for i in listing] == ["biden", "obama"]
    assert json.loads(gallery(["show", "obama"], db, home).stdout)["metadata"] == {"list": "demo"}

    erased = json.loads(gallery(["remove", "biden"], db, home).stdout)
    assert erased["erased"] == "biden" and erased["templates_removed"] == 1
    after = json.loads(gallery(["search", str(faces_dir / KNN / "train/biden/biden.jpg")], db, home).stdout)
    assert all(m["identity_id"] != "biden" for m in after["faces"][0]["matches"])
    missing = gallery(["show", "biden"], db, home)
    assert missing.returncode == 2 and "no identity 'biden'" in missing.stderr

    stats = json.loads(gallery(["stats"], db, home).stdout)
    assert stats["identities"] == 1 and stats["erasures"] == 1 and stats["index"]["kind"] == "flat"


def test_export_import(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    home = model_store.home
    gallery(["enrol", "--id", "rose", str(faces_dir / KNN / "train/rose_leslie/img1.jpg")], tmp_path / "a.db", home)
    backup = tmp_path / "backup.jsonl"
    assert gallery(["export", "--out", str(backup)], tmp_path / "a.db", home).returncode == 0
    imported = json.loads(gallery(["import", str(backup)], tmp_path / "b.db", home).stdout)
    assert imported == {"identities": 1, "templates": 1, "skipped": 0}


def test_no_database_named(tmp_path: Path) -> None:
    result = run(["gallery", "list"], tmp_path)
    assert result.returncode == 2 and "--db PATH" in result.stderr
    result = run(["gallery", "--db", str(tmp_path / "absent.db"), "list"], tmp_path)
    assert result.returncode == 2 and "no gallery database here" in result.stderr


def test_calibrate_reproduces_the_shipped_default(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    """The shipped default threshold is what `gallery calibrate` computes on pairs.csv."""
    result = gallery(["calibrate", "--pairs", str(faces_dir / "pairs.csv")], tmp_path / "g.db", model_store.home)
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)
    shipped = DEFAULT_CALIBRATIONS[EMBEDDING_MODEL_ID]
    assert calibration["threshold"] == pytest.approx(shipped.threshold, abs=5e-4)
    assert calibration["pairs_used"] == 334 and calibration["target_fmr"] == 1e-3
    assert calibration["fnmr"] == pytest.approx(shipped.fnmr, abs=0.01)
    stats = json.loads(gallery(["stats"], tmp_path / "g.db", model_store.home).stdout)
    assert stats["threshold_source"].startswith("calibrated in this gallery")
