"""Conversion of the facenet-pytorch MTCNN state_dicts into the ONNX files FaceStream runs.

The one documented, reproducible path: ``.pt`` (sha256 checked) -> PyTorch modules of
:mod:`engines.convert.mtcnn_nets` (reference form) -> their inference form (same function, faster
operators) -> torch dynamo ONNX export (opset 18, dynamic batch; dynamic height/width for
P-Net) -> numeric check of the ONNX file against the *reference* modules on random inputs
of several sizes and batch sizes (max abs difference <= 1e-4, else the conversion fails).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from engines.convert.mtcnn_nets import load_net, reference_outputs, to_inference_form
from engines.convert.onnx_export import MAX_ABS_DIFF, OPSET, export_onnx, max_abs_difference
from engines.errors import ModelStoreError
from engines.store.specs import ModelBundle

log = logging.getLogger(__name__)

# NHWC batch and spatial sizes the conversion is checked on (P-Net is fully convolutional).
CHECK_SHAPES: dict[str, list[tuple[int, int, int, int]]] = {
    "pnet": [(1, 12, 12, 3), (2, 13, 17, 3), (3, 57, 83, 3), (1, 217, 385, 3)],
    "rnet": [(1, 24, 24, 3), (7, 24, 24, 3), (64, 24, 24, 3)],
    "onet": [(1, 48, 48, 3), (5, 48, 48, 3), (33, 48, 48, 3)],
}


def check_inputs(kind: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) for shape in CHECK_SHAPES[kind]]


def convert(bundle: ModelBundle, sources: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    differences: dict[str, float] = {}
    for spec in bundle.models:
        kind = spec.file.removesuffix(".onnx")
        reference = load_net(kind, str(sources[f"{kind}.pt"]))
        path = out_dir / spec.file
        # An example with batch > 1: torch.export specialises axes whose example size is 1.
        example = torch.from_numpy(check_inputs(kind)[2])
        export_onnx(to_inference_form(reference), spec, example, path)
        onnx.checker.check_model(str(path), full_check=True)
        diff = max_abs_difference(reference_outputs(reference), path, check_inputs(kind, seed=1))
        if diff > MAX_ABS_DIFF:
            raise ModelStoreError(f"ONNX export of {spec.name} differs from PyTorch by {diff:.2e} (> {MAX_ABS_DIFF})")
        log.info("exported %s: max |ONNX - PyTorch| = %.1e", spec.name, diff)
        differences[spec.name] = diff
        spec.spec_path(out_dir).write_text(spec.to_json())
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "max_abs_difference": differences,
    }
