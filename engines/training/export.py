"""Writing trained heads: the ONNX graph, ``heads.json`` (sha256, trunk, what is shipped)
and ``metrics.json`` (configuration, per-epoch history, validation and test figures, the
training data's hash and licences)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.fileio import sha256_file
from engines.multitask.heads import INPUT, MANIFEST, OUTPUTS
from engines.store.specs import ModelSpec, TensorSpec
from engines.training.data import ATTRIBUTES, EXPRESSIONS
from engines.training.model import AGE_BINS, HeadNet

HEADS_FILE = "heads.onnx"
METRICS_FILE = "metrics.json"


class _Probabilities(nn.Module):
    def __init__(self, net: HeadNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, trunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, out = self.net(trunk)
        return (torch.softmax(out["gender"], 1)[:, 1], torch.softmax(out["age"], 1),
                torch.sigmoid(out["attributes"]), torch.softmax(out["expression"], 1))


def heads_spec(input_dim: int) -> ModelSpec:
    return ModelSpec(
        name="heads", file=HEADS_FILE, inputs=(TensorSpec(INPUT, ("batch", input_dim)),),
        outputs=(TensorSpec(OUTPUTS[0], ("batch",)), TensorSpec(OUTPUTS[1], ("batch", AGE_BINS)),
                 TensorSpec(OUTPUTS[2], ("batch", len(ATTRIBUTES))), TensorSpec(OUTPUTS[3], ("batch", len(EXPRESSIONS)))),
        color_order="RGB", mean=(0.0, 0.0, 0.0), scale=1.0, decoder="multitask.heads", layout="NC",
        description="FaceStream task heads over [unit SFace embedding, pooled SFace trunk feature]",
    )


def export(net: HeadNet, out_dir: Path, *, trunk: str, shipped_attributes: tuple[str, ...],
           expression_shipped: bool, metrics: dict[str, object]) -> Path:
    """Write the heads into ``out_dir`` and check the ONNX graph against PyTorch."""
    from engines.convert.onnx_export import export_onnx, max_abs_difference

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.eval()
    width = net.embedding_dim + net.feature_dim
    spec = heads_spec(width)
    module = _Probabilities(net)
    example = torch.randn(4, width)
    path = out_dir / HEADS_FILE
    export_onnx(module, spec, example, path)
    check = [np.random.default_rng(0).normal(size=(5, width)).astype(np.float32)]
    diff = max_abs_difference(lambda x: module(x), path, check)
    if diff > 1e-4:
        raise RuntimeError(f"exported heads differ from PyTorch by {diff:.2e}")
    for leftover in out_dir.glob(f"{HEADS_FILE}.data"):
        raise RuntimeError(f"the exporter wrote external data ({leftover}); heads must be one file")
    manifest = {
        "format": 1, "trunk": trunk, "onnx": HEADS_FILE, "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "input_dim": width, "attributes": list(ATTRIBUTES), "shipped_attributes": list(shipped_attributes),
        "expressions": list(EXPRESSIONS), "expression_shipped": expression_shipped,
        "spec": json.loads(spec.to_json()), "max_abs_difference_onnx_vs_torch": diff,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return path
