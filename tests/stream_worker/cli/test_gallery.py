"""`facestream gallery ...` end to end, as a user runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.multitask.recognizers import profile
from engines.store.model_store import ModelStore
from gallery.defaults import DEFAULT_CALIBRATIONS
from tests.stream_worker.cli.test_cli import run

KNN = "face_recognition/examples/knn_examples"


def gallery(args: list[str], db: Path, home: Path, recognizer: str | None = None):  # type: ignore[no-untyped-def]
    env = {"FACESTREAM__MODELS__RECOGNIZER": recognizer} if recognizer else {}
    return run(["gallery", "--db", str(db), *args], home, **env)


def test_enrol_search_list_show_remove(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    db, home = tmp_path / "people.db", model_store.home
    obama = [str(faces_dir / KNN / "train/obama/obama.jpg"), str(faces_dir / KNN / "train/obama/obama2.jpg")]
    enrol = gallery(["enrol", "--id", "obama", "--name", "Barack Obama", "--meta", '{"list": "demo"}', *obama], db, home)
    assert enrol.returncode == 0, enrol.stderr
    record = json.loads(enrol.stdout)
    assert record["identity"]["templates"] == {profile(DEFAULT_RECOGNIZER).model_id: 2}
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


CELEBA = "../face_train/labels_celeba.csv"  # relative to the shared faces folder


@pytest.mark.slow
def test_calibrate_reproduces_the_shipped_default(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    """The shipped default threshold of the default recognizer is what `gallery calibrate
    --labels` computes on CelebA's test split (1,750 photos of 350 people)."""
    labels = (faces_dir / CELEBA).resolve()
    result = gallery(["calibrate", "--labels", str(labels), "--split", "test"], tmp_path / "g.db", model_store.home)
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)
    shipped = DEFAULT_CALIBRATIONS[profile(DEFAULT_RECOGNIZER).model_id]
    assert calibration["method"] == "empirical" and calibration["target_fmr"] == 1e-3
    assert (calibration["genuine_pairs"], calibration["impostor_pairs"]) == (shipped.genuine_pairs,
                                                                             shipped.impostor_pairs)
    assert calibration["threshold"] == pytest.approx(shipped.threshold, abs=5e-4)
    assert calibration["fnmr"] == pytest.approx(shipped.fnmr, abs=0.005)
    stats = json.loads(gallery(["stats"], tmp_path / "g.db", model_store.home).stdout)
    assert stats["threshold_source"].startswith("calibrated in this gallery")


def test_calibrate_on_a_labelled_photo_set(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    """--labels builds every genuine pair and every impostor pair (up to --max-impostors) of
    the chosen split; pairs.csv-style files still work."""
    with (faces_dir / CELEBA).open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    people = list(dict.fromkeys(r["identity"] for r in rows))[:12]
    subset = tmp_path / "labels.csv"
    with subset.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "identity", "split"])
        for r in rows:
            if r["identity"] in people:
                writer.writerow([str((faces_dir / CELEBA).resolve().parent / r["path"]), r["identity"], "test"])
        writer.writerow([str(faces_dir / "face_recognition/examples/obama-720p.jpg"), "obama", "other"])
    result = gallery(["calibrate", "--labels", str(subset), "--split", "test", "--max-impostors", "1000"],
                     tmp_path / "g.db", model_store.home)
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)
    assert calibration["photos_used"] + calibration["photos_skipped"] == 60
    assert calibration["genuine_pairs"] <= 120 and calibration["impostor_pairs"] == 1000
    assert calibration["method"] == "normal fit to impostor scores"  # 1,000 pairs cannot resolve 1e-3
    wrong = gallery(["calibrate", "--pairs", str(subset)], tmp_path / "g.db", model_store.home)
    assert wrong.returncode == 2 and "missing column(s) path_a, path_b, same" in wrong.stderr
    alone = gallery(["calibrate", "--pairs", str(faces_dir / "pairs.csv"), "--split", "test"], tmp_path / "g.db",
                    model_store.home)
    assert alone.returncode == 2 and "--split goes with --labels" in alone.stderr
    singles = tmp_path / "singles.csv"  # one photo per person: no same-person pair to calibrate on
    singles.write_text(f"path,identity\n{faces_dir / 'face_recognition/examples/obama-720p.jpg'},a\n"
                       f"{faces_dir / 'face_recognition/examples/alex-lacamoire.png'},b\n")
    too_few = gallery(["calibrate", "--labels", str(singles)], tmp_path / "g.db", model_store.home)
    assert too_few.returncode == 2 and "cannot calibrate on this set" in too_few.stderr


def test_reembed_moves_a_gallery_to_another_recognizer(model_store: ModelStore, faces_dir: Path,
                                                       tmp_path: Path) -> None:
    db, home = tmp_path / "people.db", model_store.home
    photo = str(faces_dir / KNN / "train/obama/obama.jpg")
    assert gallery(["enrol", "--id", "obama", photo], db, home, recognizer="dlib-resnet-v1").returncode == 0
    moved = gallery(["reembed", "--model", "sface-2021dec"], db, home)
    assert moved.returncode == 0, moved.stderr
    record = json.loads(moved.stdout)
    assert record["added"] == 1 and record["model"] == profile(Recognizer.SFACE).model_id
    search = json.loads(gallery(["search", str(faces_dir / KNN / "train/obama/obama2.jpg")], db, home).stdout)
    assert search["faces"][0]["matches"][0]["identity_id"] == "obama"
    assert search["faces"][0]["matches"][0]["decision"] == "match"
    bad = gallery(["reembed", "--model", "arcface"], db, home)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
