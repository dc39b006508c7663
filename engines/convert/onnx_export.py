"""Export PyTorch modules to ONNX and check the export numerically.

The exporter is torch's dynamo exporter (opset 18) with named dynamic axes taken from the
model spec, so every file has a dynamic batch axis.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from engines.errors import ModelStoreError
from engines.store.specs import ModelSpec

log = logging.getLogger(__name__)

OPSET = 18
MAX_ABS_DIFF = 1e-4


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own INFO chatter and warnings (our log says what happens)."""
    names = ("onnxscript", "onnx_ir", "torch")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: torch.nn.Module, spec: ModelSpec, example: torch.Tensor, path: Path) -> None:
    """Write ``module`` as ONNX to ``path`` with the spec's names and dynamic axes."""
    dims: dict[int, torch.export.Dim] = {}
    for axis, dim in enumerate(spec.inputs[0].shape):
        if isinstance(dim, str):
            # Spatial axes of fully convolutional nets need at least the receptive field.
            low = 1 if dim == "batch" else 12
            dims[axis] = torch.export.Dim(f"{spec.name.replace('-', '_')}_{dim}", min=low, max=16384)
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[t.name for t in spec.inputs],
                output_names=list(spec.output_names),
                dynamic_shapes=(dims,),
                verbose=False,
            )
    except Exception as exc:
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelStoreError(
            f"exporting {spec.name} to ONNX failed with torch {torch.__version__}: {summary}. "
            f"FaceStream's conversion is tested with torch 2.13.0."
        ) from exc
    if program is None:
        raise ModelStoreError(f"torch.onnx.export returned nothing for {spec.name}")
    program.save(str(path))


def max_abs_difference(
    reference: Callable[[torch.Tensor], Sequence[torch.Tensor]], path: Path, inputs: Sequence[np.ndarray]
) -> float:
    """Largest |ONNX Runtime - reference| over every output of every input batch.

    ``reference`` maps an input batch to the expected outputs, in the ONNX file's order.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = reference(torch.from_numpy(x))
            outputs = session.run(None, {input_name: x})
            for ref, out in zip(expected, outputs, strict=True):
                if tuple(ref.shape) != out.shape:
                    raise ModelStoreError(f"{path.name}: output shape {out.shape} != PyTorch {tuple(ref.shape)}")
                worst = max(worst, float(np.abs(ref.numpy() - out).max(initial=0.0)))
    return worst
