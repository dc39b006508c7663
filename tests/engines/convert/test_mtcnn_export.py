"""The ONNX files FaceStream runs agree with the PyTorch MTCNN modules."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.convert.mtcnn_nets import FastPReLU, PNet, load_net, load_state_dict_checked, reference_outputs
from engines.convert.onnx_export import max_abs_difference
from engines.errors import WeightFormatError
from engines.store.catalog import MTCNN, ONET, PNET, RNET
from engines.store.model_store import ModelStore
from engines.store.specs import ModelSpec

# NHWC shapes of several sizes and batch sizes; P-Net is fully convolutional.
SHAPES = {
    "pnet": [(1, 12, 12, 3), (2, 31, 45, 3), (4, 100, 77, 3), (1, 360, 640, 3)],
    "rnet": [(1, 24, 24, 3), (5, 24, 24, 3), (50, 24, 24, 3)],
    "onet": [(1, 48, 48, 3), (3, 48, 48, 3), (20, 48, 48, 3)],
}
SPECS: dict[str, ModelSpec] = {"pnet": PNET, "rnet": RNET, "onet": ONET}


@pytest.fixture(scope="module")
def weights(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pt")
    with zipfile.ZipFile(next(wheelhouse.glob("facenet_pytorch-*.whl"))) as wheel:
        for kind in SHAPES:
            (folder / f"{kind}.pt").write_bytes(wheel.read(f"facenet_pytorch/data/{kind}.pt"))
    return folder


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_onnx_matches_pytorch(kind: str, weights: Path, model_store: ModelStore) -> None:
    reference = load_net(kind, str(weights / f"{kind}.pt"))
    path = model_store.ensure(MTCNN).path(SPECS[kind])
    rng = np.random.default_rng(7)
    inputs = [rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) for shape in SHAPES[kind]]
    assert max_abs_difference(reference_outputs(reference), path, inputs) <= 1e-4


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_onnx_files_have_a_dynamic_batch_axis(kind: str, model_store: ModelStore) -> None:
    graph = onnx.load(str(model_store.ensure(MTCNN).path(SPECS[kind]))).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[3:]] == [3]  # NHWC
    if kind == "pnet":
        assert dims[1].dim_param and dims[2].dim_param
    assert [o.name for o in graph.output] == list(SPECS[kind].output_names)


def test_fast_prelu_equals_prelu_for_any_slope() -> None:
    prelu = torch.nn.PReLU(6)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([-1.3, -0.2, 0.0, 0.25, 1.0, 1.7]))
    z = torch.randn(3, 6, 9, 11) * 5
    torch.testing.assert_close(FastPReLU(prelu)(z), prelu(z), rtol=1e-6, atol=1e-6)  # 1 ulp
    flat = torch.randn(4, 6)
    torch.testing.assert_close(FastPReLU(prelu)(flat), prelu(flat), rtol=1e-6, atol=1e-6)


def test_state_dict_with_wrong_keys_is_refused() -> None:
    state = PNet().state_dict()
    state["conv9.weight"] = state.pop("conv1.weight")
    with pytest.raises(WeightFormatError, match=r"missing keys \['conv1.weight'\].*unexpected keys \['conv9.weight'\]"):
        load_state_dict_checked(PNet(), state, "pnet.pt")


def test_state_dict_with_wrong_shapes_is_refused() -> None:
    state = PNet().state_dict()
    state["conv2.weight"] = torch.zeros(16, 10, 5, 5)
    with pytest.raises(WeightFormatError, match=r"conv2.weight has shape \(16, 10, 5, 5\)"):
        load_state_dict_checked(PNet(), state, "pnet.pt")


def test_non_weight_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "pnet.pt"
    bogus.write_bytes(b"this is not a zip archive")
    with pytest.raises(WeightFormatError, match="not a loadable PyTorch state_dict"):
        load_net("pnet", str(bogus))
