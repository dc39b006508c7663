"""Conversion of the multi-task bundle's sources into the files FaceStream runs.

- ``dlib_face_recognition_resnet_model_v1.dat`` -> :mod:`engines.convert.dlib_dat` parser ->
  :mod:`engines.convert.dlib_resnet` PyTorch rebuild -> ONNX (opset 18, dynamic batch, NHWC input)
  -> checked against the PyTorch rebuild on random chips (max abs difference <= 1e-4).
  The tests check the rebuild against dlib itself.
- ``age-v1.onnx`` and ``gender-v1.onnx`` are used as published (sha256 checked).
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

from engines.convert.dlib_dat import read_dat
from engines.convert.dlib_resnet import build_resnet
from engines.convert.onnx_export import MAX_ABS_DIFF, OPSET, export_onnx, max_abs_difference
from engines.errors import ModelStoreError, WeightFormatError
from engines.store.catalog import AGE, EMBEDDING, GENDER, SHAPE_PREDICTOR_FILE
from engines.store.specs import ModelBundle

log = logging.getLogger(__name__)


class _NHWC(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))  # type: ignore[no-any-return]


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
    for spec, source in ((AGE, "age-v1.onnx"), (GENDER, "gender-v1.onnx")):
        shutil.copyfile(sources[source], out_dir / spec.file)
        spec.spec_path(out_dir).write_text(spec.to_json())
    shutil.copyfile(sources[SHAPE_PREDICTOR_FILE], out_dir / SHAPE_PREDICTOR_FILE)
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "max_abs_difference": {EMBEDDING.name: diff},
        "dlib_loss": network.loss.fields,
    }
