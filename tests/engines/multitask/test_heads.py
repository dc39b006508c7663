"""The shipped task heads: what they say on the shared labelled photos, and how they load."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.errors import ModelStoreError, WeightFormatError
from engines.multitask.heads import SHIPPED, HeadsManifest, TaskHeads
from engines.multitask.network import MultiTaskNet
from engines.runtime.engine import EngineRuntime
from engines.store.catalog import SFACE_BUNDLE

TRUNK = f"{SFACE_BUNDLE.name}-v{SFACE_BUNDLE.version}"
BUCKET_STARTS = (0, 3, 10, 20, 30, 40, 50, 60, 70)
BUCKETS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")


def _bucket(age: float) -> int:
    return max(i for i, start in enumerate(BUCKET_STARTS) if age >= start)


def test_shipped_heads_on_the_labelled_photos(detected, multitask: MultiTaskNet, faces_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """README, "Task heads": on the 78 photos of labels.csv with a gender, the largest face's
    gender is right for 68; on the 54 FairFace crops, gender for 44 and the age bucket (or a
    neighbouring one) for 45 (the Cydral nets: 62, 38 and 42)."""
    rows = [r for r in csv.DictReader((faces_dir / "labels.csv").open()) if r["gender"]]
    gender_right = fairface_gender = fairface_age = 0
    for r in rows:
        image, faces = detected(r["path"])
        out = multitask.analyze([image], [faces[int(np.argmax(faces.areas))]])[0]
        right = (out.male_probs[0] > 0.5) == (r["gender"] == "male")
        gender_right += right
        assert set(out.attributes_of(0)) == set(multitask.attribute_names) and out.attribute_names
        assert 0 <= out.ages[0] <= 100 and out.age_stds[0] > 0
        if r["age"]:
            fairface_gender += right
            fairface_age += abs(_bucket(float(out.ages[0])) - BUCKETS.index(r["age"])) <= 1
    assert len(rows) == 78
    assert gender_right >= 68 and fairface_gender >= 44 and fairface_age >= 45, (gender_right, fairface_gender,
                                                                                 fairface_age)


def test_attributes_and_expression_on_a_smiling_face(detected, multitask: MultiTaskNet) -> None:  # type: ignore[no-untyped-def]
    """Obama smiling broadly (obama-480p.jpg): smiling, mouth open, no glasses, no hat, happy."""
    image, faces = detected("face_recognition/examples/obama-480p.jpg")
    out = multitask.analyze([image], [faces])[0]
    attrs = out.attributes_of(0)
    assert attrs["Smiling"] > 0.9 and attrs["Mouth_Slightly_Open"] > 0.9
    assert attrs["Eyeglasses"] < 0.1 and attrs["Wearing_Hat"] < 0.1
    expression = out.expression_of(0)
    assert max(expression, key=expression.__getitem__) == "happy"


def test_manifest_names_what_is_shipped() -> None:
    manifest = HeadsManifest.read(SHIPPED)
    assert manifest.trunk == TRUNK
    assert "Blurry" not in manifest.shipped_attributes  # 0.81 balanced accuracy on CelebA test: below 0.85
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    assert {row["dataset"] for row in metrics["training_data"]["licences"]} == {"utkface", "celeba", "fer2013"}
    assert all("RESEARCH" in row["licence"] for row in metrics["training_data"]["licences"])
    assert metrics["shipped"]["attributes"] == list(manifest.shipped_attributes)


def test_tampered_or_foreign_heads_are_refused(runtime: EngineRuntime, tmp_path: Path) -> None:
    copy = tmp_path / "heads"
    shutil.copytree(SHIPPED, copy)
    with pytest.raises(ModelStoreError, match=f"trained on {TRUNK}.*retrain"):
        TaskHeads.load(runtime, copy, trunk="dlib-v1")
    data = bytearray((copy / "heads.onnx").read_bytes())
    data[-100] ^= 0xFF
    (copy / "heads.onnx").write_bytes(bytes(data))
    with pytest.raises(WeightFormatError, match="sha256"):
        TaskHeads.load(runtime, copy, trunk=TRUNK)
    (copy / "heads.json").write_text("{}")
    with pytest.raises(ModelStoreError, match="not a task-heads manifest"):
        TaskHeads.load(runtime, copy, trunk=TRUNK)
