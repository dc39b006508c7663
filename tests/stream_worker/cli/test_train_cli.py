"""``facestream train features``, ``heads`` and ``centre`` on a small slice of the shared
training set (seconds), and the trained heads loaded by the multi-task network."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engines.store.model_store import ModelStore
from tests.stream_worker.cli.test_sightings_cli import run

pytest.importorskip("torch")

TRAIN_DATA = Path(__file__).resolve().parents[3].parent / "shared/data/face_train"
PER_SPLIT = 8


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder with the first 8 images of every dataset's every split (links to
    the shared images; the label files are slices of the shared ones)."""
    if not TRAIN_DATA.is_dir():
        pytest.skip(f"{TRAIN_DATA} is not here")
    root = tmp_path_factory.mktemp("face-train")
    for name in ("utkface", "celeba", "fer2013"):
        (root / name).symlink_to(TRAIN_DATA / name)
        with (TRAIN_DATA / f"labels_{name}.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            rows, taken = [], {}
            for r in reader:
                if taken.get(r["split"], 0) < PER_SPLIT:
                    taken[r["split"]] = taken.get(r["split"], 0) + 1
                    rows.append(r)
        with (root / f"labels_{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (root / "SOURCES.md").write_text((TRAIN_DATA / "SOURCES.md").read_text())
    return root


def test_train_features_then_heads(small_set: Path, model_store: ModelStore, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "heads"
    done = run(["train", "features", "--data", str(small_set), "--cache", str(cache), "--processes", "1"],
               model_store.home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 64 and report["faces_found"] >= 56 and report["trunk"] == "sface-v2"
    assert report["unreadable"] == 0
    again = run(["train", "features", "--data", str(small_set), "--cache", str(cache)], model_store.home)
    assert again.returncode == 0 and json.loads(again.stdout) == report  # complete: nothing recomputed

    done = run(["train", "heads", "--data", str(small_set), "--cache", str(cache), "--out", str(out),
                "--epochs", "3", "--hidden", "16", "--weighting", "dynamic"], model_store.home)
    assert done.returncode == 0, done.stderr
    epochs = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("weights gender=" in line and "loss gender=" in line for line in epochs)
    manifest = json.loads((out / "heads.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((out / "heads.onnx").read_bytes()).hexdigest()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["weighting"] == "dynamic" and metrics["config"]["seed"] == 0
    assert metrics["training_data"]["labels_sha256"] == hashlib.sha256(
        b"".join((small_set / f"labels_{n}.csv").read_bytes() for n in ("utkface", "celeba", "fer2013"))).hexdigest()
    assert {row["dataset"] for row in metrics["training_data"]["licences"]} == {"utkface", "celeba", "fer2013"}
    assert set(metrics["test"]) == {"celeba", "fer2013"} and "age_mae_by_decade" in metrics["val"]["utkface"]
    assert len(metrics["history"]) == 3 and set(metrics["history"][0]["task_weights"]) == {
        "gender", "age", "attributes", "expression"}

    # the identity centre: the mean unit embedding of the train faces of the averaged sets
    centre_file = tmp_path / "centre.json"
    done = run(["train", "centre", "--data", str(small_set), "--cache", str(cache), "--out", str(centre_file)],
               model_store.home)
    assert done.returncode == 0, done.stderr
    from engines.multitask.centre import IdentityCentre
    from engines.training.data import SETS, SPLITS, load
    from engines.training.features import read

    centre = IdentityCentre.from_json(centre_file.read_text())
    data = load(small_set)
    features = read(data, cache)
    rows = features.found & (data.split == SPLITS.index("train")) & (data.source != SETS.index("fer2013"))
    unit = features.embedding[rows] / np.linalg.norm(features.embedding[rows], axis=1, keepdims=True)
    assert centre.faces == int(rows.sum()) and centre.sets == ("utkface", "celeba") and centre.trunk == "sface-v2"
    np.testing.assert_allclose(centre.vector, unit.mean(0), atol=1e-5)
    assert json.loads(done.stdout)["faces"] == centre.faces
    done = run(["train", "centre", "--data", str(small_set), "--cache", str(cache), "--out", str(tmp_path)],
               model_store.home)
    assert done.returncode != 0 and "cannot write the centre" in done.stderr and "Traceback" not in done.stderr

    # the same cache and options give the same weights (seeded)
    out2 = tmp_path / "heads2"
    run(["train", "heads", "--data", str(small_set), "--cache", str(cache), "--out", str(out2),
         "--epochs", "3", "--hidden", "16", "--weighting", "dynamic"], model_store.home)
    import onnx

    first, second = (onnx.load(str(d / "heads.onnx")).graph.initializer for d in (out, out2))
    assert len(first) == len(second) and all(
        np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)) for a, b in zip(first, second))

    # the worker's network loads them (--heads DIR) and reports what they ship
    from engines import EngineRuntime, RuntimeConfig, read_image_file
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.network import MultiTaskNet

    with EngineRuntime(RuntimeConfig(workers=1)) as runtime:
        net = MultiTaskNet.create(runtime=runtime, store=model_store, heads=out)
        image = read_image_file(TRAIN_DATA / "celeba" / "celeba_identity_samples" / "10001_191146.jpg")
        faces = MTCNNDetector.create(runtime=runtime, store=model_store).detect(image)
        result = net.analyze([image], [faces])[0]
    assert net.attribute_names == tuple(manifest["shipped_attributes"])
    assert result.attribute_probs.shape == (len(faces), len(manifest["shipped_attributes"]))


def test_an_unreadable_image_is_counted_and_the_run_goes_on(tmp_path: Path, model_store: ModelStore) -> None:
    (tmp_path / "utkface").mkdir()
    (tmp_path / "utkface" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "utkface" / "good.jpg").symlink_to(
        TRAIN_DATA / "utkface" / "data" / "100_0_0_20170112213500903.jpg.chip.jpg")
    (tmp_path / "labels_utkface.csv").write_text("path,split,age,gender,race\n"
                                                 "utkface/broken.jpg,train,30,male,white\n"
                                                 "utkface/missing.jpg,train,30,male,white\n"
                                                 "utkface/good.jpg,val,100,male,white\n")
    done = run(["train", "features", "--data", str(tmp_path), "--cache", str(tmp_path / "c"), "--sets", "utkface",
                "--processes", "1"], model_store.home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 3 and report["unreadable"] == 2 and report["faces_found"] == 1


def test_train_refuses_bad_input(tmp_path: Path, model_store: ModelStore) -> None:
    (tmp_path / "labels_utkface.csv").write_text("path,split,age,gender,race\n../../etc/passwd,train,30,male,white\n")
    done = run(["train", "features", "--data", str(tmp_path), "--cache", str(tmp_path / "c"), "--sets", "utkface"],
               model_store.home)
    assert done.returncode == 2 and "points outside" in done.stderr
    done = run(["train", "heads", "--data", str(tmp_path), "--cache", str(tmp_path / "none"), "--out",
                str(tmp_path / "o"), "--sets", "celeba"], model_store.home)
    assert done.returncode == 2 and "labels_celeba.csv is missing" in done.stderr
    done = run(["train", "heads", "--data", str(tmp_path), "--cache", str(tmp_path / "none"), "--out",
                str(tmp_path / "o"), "--weighting", "magic"], model_store.home)
    assert done.returncode == 2 and "invalid choice" in done.stderr
