"""The `facestream` command, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines.config import DEFAULT_RECOGNIZER, Recognizer
from engines.multitask.recognizers import profile
from engines.store.model_store import ModelStore

# The console script installed beside this interpreter (the venv need not be on PATH).
_beside = Path(sys.executable).parent / "facestream"
FACESTREAM = str(_beside) if _beside.exists() else shutil.which("facestream")


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert FACESTREAM, "the facestream console script is not installed (pip install -e .)"
    return subprocess.run(
        [FACESTREAM, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "FACESTREAM__MODELS__HOME": str(home), **env},
    )


def test_analyze_json_lines(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    two_people = faces_dir / "face_recognition/examples/two_people.jpg"
    dogs = faces_dir / "dlib/examples/faces/dogs.jpg"
    result = run(["analyze", "--json", str(two_people), str(corrupt), str(dogs)], model_store.home)
    assert result.returncode == 1, result.stderr  # one bad file: reported, the others still analysed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(two_people), str(corrupt), str(dogs)]
    first = lines[0]
    assert (first["width"], first["height"]) == (1126, 661)
    assert len(first["faces"]) == 2
    face = first["faces"][0]
    assert set(face) == {"box", "score", "landmarks", "age", "age_std", "gender", "gender_score", "pose", "quality"}
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
    assert face["gender"] == "male" and 25 <= face["age"] <= 80 and set(face["pose"]) == {"yaw", "pitch", "roll"}
    assert lines[1]["error_type"] == "InvalidImageError" and "not a decodable image" in lines[1]["error"]
    assert lines[2]["faces"] == []
    assert "1 of 3 image(s) could not be analysed" in result.stderr


def test_analyze_embeddings_and_detect_only(model_store: ModelStore, faces_dir: Path) -> None:
    image = str(faces_dir / "face_recognition/examples/knn_examples/train/biden/biden.jpg")
    with_embedding = json.loads(run(["analyze", "--json", "--embeddings", image], model_store.home).stdout)
    embedding = with_embedding["faces"][0]["embedding"]
    assert len(embedding) == 128 and abs(sum(v * v for v in embedding) - 1.0) < 1e-3
    detect_only = json.loads(run(["analyze", "--json", "--detect-only", image], model_store.home).stdout)
    assert set(detect_only["faces"][0]) == {"box", "score", "landmarks"}


def test_verify(model_store: ModelStore, faces_dir: Path) -> None:
    obama = str(faces_dir / "face_recognition/examples/knn_examples/train/obama/obama.jpg")
    obama3 = str(faces_dir / "face_recognition/tests/test_images/obama3.jpg")
    biden = str(faces_dir / "face_recognition/examples/knn_examples/train/biden/biden.jpg")
    same = run(["verify", obama, obama3], model_store.home)
    assert same.returncode == 0, same.stderr
    result = json.loads(same.stdout)
    assert set(result) == {"distance", "similarity", "same", "threshold"} and result["same"] is True
    assert result["similarity"] >= result["threshold"] == profile(DEFAULT_RECOGNIZER).verify_threshold
    different = json.loads(run(["verify", obama, biden], model_store.home).stdout)
    assert different["same"] is False and different["similarity"] < different["threshold"]
    # with dlib's recognizer (configured through the environment), the distance is dlib's own:
    # its rule (same below 0.6) agrees
    dlib_same = json.loads(run(["verify", obama, obama3], model_store.home,
                               FACESTREAM__MODELS__RECOGNIZER="dlib-resnet-v1").stdout)
    assert dlib_same["same"] and dlib_same["distance"] < 0.6
    assert dlib_same["threshold"] == profile(Recognizer.DLIB).verify_threshold
    faceless = run(["verify", str(faces_dir / "dlib/examples/faces/dogs.jpg"), biden], model_store.home)
    assert faceless.returncode == 1 and "dogs.jpg: no face found" in faceless.stderr


def test_analyze_folder_human_output(model_store: ModelStore, faces_dir: Path) -> None:
    result = run(["analyze", str(faces_dir / "dlib/examples/faces"), "--min-face-size", "24"], model_store.home)
    assert result.returncode == 0, result.stderr
    assert "2008_007676.jpg: 7 face(s) in" in result.stdout
    assert result.stdout.count("face(s) in") == 12


def test_missing_models_without_auto_fetch(tmp_path: Path, faces_dir: Path) -> None:
    result = run(["analyze", "--no-auto-fetch", str(faces_dir / "dlib/examples/faces/dogs.jpg")], tmp_path)
    assert result.returncode == 2
    assert "Run `facestream models fetch`" in result.stderr and str(tmp_path) in result.stderr


def test_models_list_and_info(model_store: ModelStore) -> None:
    listing = run(["models", "list"], model_store.home)
    assert listing.returncode == 0 and listing.stdout.startswith("mtcnn\tok\t")
    assert "\nmultitask\tok\t" in listing.stdout and "\nsface\tok\t" in listing.stdout
    info = run(["info", "--device", "cpu"], model_store.home)
    report = json.loads(info.stdout)
    assert report["runtime"]["device"] == "cpu" and report["runtime"]["fallback"] is False
    assert len(report["runtime"]["backends"]) == 5  # P-, R-, O-Net, SFace (with its trunk feature), the task heads
    assert report["runtime"]["backends"][-1].startswith("heads: ")
    assert report["bundles"] == {"mtcnn": "ok", "multitask": "ok", "sface": "ok"}


def test_force_cpu_switch_is_visible(model_store: ModelStore) -> None:
    info = run(["info"], model_store.home, FACESTREAM__RUNTIME__FORCE_CPU="1")
    assert json.loads(info.stdout)["runtime"]["device_reason"] == "runtime.force_cpu is set"


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "x.jpg", "--min-face-size", "5"],
         "detector.min_face_size_px: Input should be greater than or equal to 12, got 5 (from command line)"),
        (["models", "fetch", "nosuchmodel"], "unknown bundle(s) nosuchmodel"),
    ],
)
def test_usage_errors_are_clear(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(args, tmp_path)
    assert result.returncode == 2 and message in result.stderr
