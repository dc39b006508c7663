"""Conversion of OpenCV Zoo's SFace (block-quantised int8 ONNX) into the graph FaceStream runs.

The published file cannot be loaded by ONNX Runtime (it declares 29 graph inputs that no
node uses, plus every weight again as an input shadowing its initializer: OpenCV Zoo
issue 313), has a batch axis fixed to 1, dequantises its weights on every run and uses
``PRelu``, which ONNX Runtime runs slowly on CPU. The conversion, with ``onnx`` only:

1. *clean*: keep ``data`` as the only graph input; this cleaned graph is the reference;
2. *fold*: every ``DequantizeLinear`` (and the ``Reshape`` of its result) whose inputs are
   all constants is evaluated once, by ONNX Runtime itself, into an fp32 initializer;
3. *dynamic batch*: the first axis of the input and output becomes ``batch`` (the stale
   intermediate shapes recorded for batch 1 are dropped);
4. *PRelu*: ``PRelu(x, a)`` becomes ``a * x + (1 - a) * Relu(x)``, the two per-channel
   scalings written as ``BatchNormalization`` (same values). ONNX Runtime runs every node of
   this form in its blocked NCHWc layout; ``PRelu``, or ``Min``-based rewrites, force a
   layout conversion around every activation (measured, 1 thread: 26.6 ms per face as
   published, 21.8 with ``Relu(x) + a * Min(x, 0)``, 14.3 with this form);
5. *feature*: a second output, ``feature``, is added beside the embedding: the last
   convolution's activations (``conv_14_relu``, 1024 x 7 x 7) averaged over the whole map,
   over its upper three rows (eyes, brows, forehead, hat) and over its lower three rows
   (mouth, chin), concatenated into 3,072 values. The trained task heads
   (:mod:`engines.multitask.heads`) read it, so one backbone call per face feeds identity,
   age, gender, attributes and expression; the embedding is unchanged;
6. *check*: the converted graph is compared with the cleaned reference on real-valued
   random chips at batch 1 and with a batch of 5 against each chip alone; the largest
   difference must stay under :data:`MAX_ABS_DIFF` relative to the output's scale.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from engines.errors import ModelStoreError, WeightFormatError
from engines.store.catalog import SFACE, SFACE_SOURCE, YUNET, YUNET_SOURCE
from engines.store.catalog import SFACE_FEATURE as FEATURE_OUTPUT
from engines.store.specs import ModelBundle

log = logging.getLogger(__name__)

MAX_REL_DIFF = 1e-4
"""Largest |converted - reference| allowed, relative to the reference's largest |value|."""
_FOLDED_OPS = ("DequantizeLinear", "Reshape")
FEATURE_SOURCE = "conv_14_relu"
"""The trunk activation the ``feature`` output pools (N, 1024, 7, 7)."""
FEATURE_BANDS = ((0, 7), (0, 3), (4, 7))
"""Rows of the 7 x 7 map each part of ``feature`` averages: all, upper, lower."""


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """The published graph with ``data`` as its only input (nothing else changed)."""
    cleaned = onnx.ModelProto()
    cleaned.CopyFrom(model)
    inputs = [i for i in cleaned.graph.input if i.name == SFACE.input_name]
    if len(inputs) != 1:
        raise WeightFormatError(f"the SFace graph has no input named {SFACE.input_name!r}")
    del cleaned.graph.input[:]
    cleaned.graph.input.extend(inputs)
    return cleaned


def _constant_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The dequantisation nodes (and reshapes of their results) computed from constants only."""
    constant = {i.name for i in graph.initializer}
    folded = []
    for node in graph.node:  # topological order: a constant's producer comes first
        if node.op_type in _FOLDED_OPS and all(name in constant for name in node.input if name):
            folded.append(node)
            constant.update(node.output)
    return folded


def fold_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the constant dequantisation subgraphs by their fp32 values."""
    graph = model.graph
    folded = _constant_nodes(graph)
    if not folded:
        raise WeightFormatError("the SFace graph has no block-quantised weights to fold (unexpected file)")
    consumed = {name for node in graph.node if node not in folded for name in node.input}
    wanted = sorted({out for node in folded for out in node.output if out in consumed})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in wanted)
    values = _session(probe).run(wanted, {SFACE.input_name: np.zeros((1, 3, 112, 112), np.float32)})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [n for n in out.graph.node if all(o not in {x for f in folded for x in f.output} for o in n.output)]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    still_used = {name for node in keep for name in node.input}
    initializers = [i for i in out.graph.initializer if i.name in still_used]
    initializers += [numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in zip(wanted, values)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    return out


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Mark the first axis of the input and the output as ``batch``."""
    del model.graph.value_info[:]  # shapes inferred for batch 1
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    return model


def _channel_scale(x: str, scale: np.ndarray, out: str, stem: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """``x * scale[c]`` per channel, as a BatchNormalization (mean 0, variance 1, epsilon 0)."""
    c = scale.size
    names = [f"{stem}_scale", f"{stem}_zero", f"{stem}_one"]
    values = [scale, np.zeros(c), np.ones(c)]
    tensors = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, values)]
    node = helper.make_node("BatchNormalization", [x, names[0], names[1], names[1], names[2]], [out],
                            name=f"{stem}_bn", epsilon=0.0)
    return node, tensors


def rewrite_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """``PRelu(x, a)`` -> ``BN_a(x) + BN_(1-a)(Relu(x))``: identical values, ONNX Runtime's
    NCHWc layout throughout (see the module's notes)."""
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope_name = node.input
        (y,) = node.output
        if slope_name not in constants:
            raise WeightFormatError(f"PRelu {node.name}: its slope is not a constant")
        slope = numpy_helper.to_array(constants[slope_name]).astype(np.float64).reshape(-1)
        stem = f"{node.name or y}_prelu"
        linear, linear_consts = _channel_scale(x, slope, f"{stem}_linear", f"{stem}_a")
        rectified, rectified_consts = _channel_scale(f"{stem}_relu", 1.0 - slope, f"{stem}_rectified", f"{stem}_1ma")
        graph.initializer.extend(linear_consts + rectified_consts)
        nodes += [
            linear,
            helper.make_node("Relu", [x], [f"{stem}_relu"], name=f"{stem}_relu"),
            rectified,
            helper.make_node("Add", [f"{stem}_linear", f"{stem}_rectified"], [y], name=f"{stem}_add"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def add_feature(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the ``feature`` output (see the module's notes): band averages of the last
    convolution's activations, concatenated."""
    graph = model.graph
    if not any(FEATURE_SOURCE in node.output for node in graph.node):
        raise WeightFormatError(f"the SFace graph has no {FEATURE_SOURCE!r} activation to pool")
    parts = []
    for k, (top, bottom) in enumerate(FEATURE_BANDS):
        stem = f"feature_band{k}"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([top], np.int64), f"{stem}_starts"),
            numpy_helper.from_array(np.array([bottom], np.int64), f"{stem}_ends"),
            numpy_helper.from_array(np.array([2], np.int64), f"{stem}_axes"),
        ])
        graph.node.extend([
            helper.make_node("Slice", [FEATURE_SOURCE, f"{stem}_starts", f"{stem}_ends", f"{stem}_axes"],
                             [f"{stem}_rows"], name=f"{stem}_slice"),
            helper.make_node("GlobalAveragePool", [f"{stem}_rows"], [f"{stem}_pooled"], name=f"{stem}_pool"),
            helper.make_node("Flatten", [f"{stem}_pooled"], [stem], name=f"{stem}_flatten", axis=1),
        ])
        parts.append(stem)
    graph.node.append(helper.make_node("Concat", parts, [FEATURE_OUTPUT], name="feature_concat", axis=1))
    width = 1024 * len(FEATURE_BANDS)
    graph.output.append(helper.make_tensor_value_info(FEATURE_OUTPUT, onnx.TensorProto.FLOAT, ["batch", width]))
    return model


def compare(reference: onnx.ModelProto, converted: onnx.ModelProto, seed: int = 0) -> float:
    """Largest |converted - reference| over random chips, relative to the output scale;
    a batch of the converted graph is also checked against its chips one at a time."""
    rng = np.random.default_rng(seed)
    chips = rng.uniform(0, 255, (5, 3, 112, 112)).astype(np.float32)
    ref, new = _session(reference), _session(converted)
    name = SFACE.input_name
    out = [SFACE.outputs[0].name]
    expected = np.concatenate([ref.run(out, {name: chips[i : i + 1]})[0] for i in range(len(chips))])
    batched = new.run(out, {name: chips})[0]
    single = np.concatenate([new.run(out, {name: chips[i : i + 1]})[0] for i in range(len(chips))])
    if batched.shape != expected.shape:
        raise ModelStoreError(f"converted SFace gives shape {batched.shape}, the original {expected.shape}")
    scale = float(np.abs(expected).max())
    return float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()) / scale)


def convert(bundle: ModelBundle, sources: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    try:
        published = onnx.load(str(sources[SFACE_SOURCE]))
    except Exception as exc:
        raise WeightFormatError(f"{SFACE_SOURCE} is not a readable ONNX file: {exc}") from exc
    reference = clean(published)
    converted = add_feature(rewrite_prelu(dynamic_batch(fold_weights(reference))))
    onnx.checker.check_model(converted, full_check=True)
    diff = compare(reference, converted)
    if diff > MAX_REL_DIFF:
        raise ModelStoreError(f"converted SFace differs from the published graph by {diff:.2e} (relative)")
    log.info("converted %s: max relative |converted - published| = %.1e", SFACE.name, diff)
    onnx.save(converted, str(out_dir / SFACE.file))
    SFACE.spec_path(out_dir).write_text(SFACE.to_json())
    return {
        "tool": "onnx graph surgery (engines.convert.sface)",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "dropped_graph_inputs": len(published.graph.input) - 1,
        "max_relative_difference": {SFACE.name: diff},
    }


def copy_yunet(bundle: ModelBundle, sources: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """YuNet is used as published (only by the benchmark's baseline, through OpenCV)."""
    shutil.copyfile(sources[YUNET_SOURCE], out_dir / YUNET.file)
    YUNET.spec_path(out_dir).write_text(YUNET.to_json())
    return {"tool": "copied as published"}

