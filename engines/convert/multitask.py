"""Conversion of the multi-task bundle's sources into the files FaceStream runs.

- ``dlib_face_recognition_resnet_model_v1.dat`` -> :mod:`engines.convert.dlib_dat` parser ->
  :mod:`engines.convert.dlib_resnet` PyTorch rebuild -> ONNX (opset 18, dynamic batch, NHWC input)
  -> checked against the PyTorch rebuild on random chips (max abs difference <= 1e-4).
  The tests check the rebuild against dlib itself.
- ``age-v1.onnx`` and ``gender-v1.onnx`` are used as published (sha256 checked), except that
  weights too small for a normal float32 (6,667 in the age net, 145 in gender's) are set to
  0: CPUs multiply subnormal numbers in microcode, which made the age net 10x slower on real
  chips (10.8 -> 1.1 ms per face) for outputs that stay bit-identical; the converter checks
  that they do on random chips.
- The dlib 5-point landmark model is copied as is, for alignment.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from engines.convert.dlib_dat import read_dat
from engines.convert.dlib_resnet import build_resnet
from engines.convert.onnx_export import MAX_ABS_DIFF, OPSET, export_onnx, max_abs_difference
from engines.errors import ModelStoreError, WeightFormatError
from engines.store.catalog import AGE, EMBEDDING, GENDER, SHAPE_PREDICTOR_FILE
from engines.store.specs import ModelBundle, ModelSpec

log = logging.getLogger(__name__)


class _NHWC(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))  # type: ignore[no-any-return]


def flush_subnormal_weights(source: Path, target: Path, spec: ModelSpec) -> int:
    """Copy an ONNX file with its subnormal float32 weights set to 0; check on random chips
    that the outputs do not change (beyond 1e-6). Returns how many weights were flushed."""
    model = onnx.load(str(source))
    tiny = np.finfo(np.float32).tiny
    count = 0
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32:
            continue
        subnormal = (values != 0) & (np.abs(values) < tiny)
        if subnormal.any():
            count += int(subnormal.sum())
            tensor.CopyFrom(numpy_helper.from_array(np.where(subnormal, np.float32(0), values), tensor.name))
    onnx.save(model, str(target))
    shape = [4 if isinstance(d, str) else d for d in spec.inputs[0].shape]
    x = np.random.default_rng(0).uniform(-0.5, 0.5, shape).astype(np.float32)
    diff = max_abs_difference(lambda t: (torch.from_numpy(_run_onnx(source, spec.input_name, t.numpy())),),
                              target, [x])
    if diff > 1e-6:
        raise ModelStoreError(f"flushing subnormal weights of {spec.name} changed its outputs by {diff:.2e}")
    return count


def _run_onnx(path: Path, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x})[0]  # type: ignore[no-any-return]


def convert(bundle: ModelBundle, sources: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    network = read_dat(sources["dlib_face_recognition_resnet_model_v1.dat"])
    file_mean = network.input.fields["mean"]
    if not np.allclose(file_mean, EMBEDDING.mean, atol=1e-3) or network.input.fields["nr"] != EMBEDDING.chip.size:
        raise WeightFormatError(
            f"the embedding file expects {network.input.fields['nr']} px chips with means {file_mean}; "
            f"FaceStream's spec says {EMBEDDING.chip.size} px and {EMBEDDING.mean}"
        )
    resnet = _NHWC(build_resnet(network)).eval()
    rng = np.random.default_rng(0)
    path = out_dir / EMBEDDING.file
    export_onnx(resnet, EMBEDDING, torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 150, 150, 3)).astype(np.float32)), path)
    onnx.checker.check_model(str(path), full_check=True)
    checks = [rng.uniform(-0.5, 0.5, (n, 150, 150, 3)).astype(np.float32) for n in (1, 3, 8)]
    diff = max_abs_difference(lambda x: (resnet(x),), path, checks)
    if diff > MAX_ABS_DIFF:
        raise ModelStoreError(f"ONNX export of {EMBEDDING.name} differs from PyTorch by {diff:.2e}")
    log.info("exported %s: max |ONNX - PyTorch| = %.1e", EMBEDDING.name, diff)
    EMBEDDING.spec_path(out_dir).write_text(EMBEDDING.to_json())
    flushed = {}
    for spec, source in ((AGE, "age-v1.onnx"), (GENDER, "gender-v1.onnx")):
        flushed[spec.name] = flush_subnormal_weights(sources[source], out_dir / spec.file, spec)
        spec.spec_path(out_dir).write_text(spec.to_json())
    shutil.copyfile(sources[SHAPE_PREDICTOR_FILE], out_dir / SHAPE_PREDICTOR_FILE)
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "max_abs_difference": {EMBEDDING.name: diff},
        "subnormal_weights_flushed": flushed,
        "dlib_loss": network.loss.fields,
    }
