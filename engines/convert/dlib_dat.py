"""A reader for dlib's DNN serialisation format (``.dat`` files written by ``dlib::serialize``).

Only reads numbers, strings and float tensors: nothing in the file is executed. Unknown
layer tags, truncated data and trailing bytes are errors that name the offset.

The format (dlib ``serialize.h``, ``core.h``, ``layers.h``, ``input.h``, ``loss.h``):

- integers: a control byte (low 4 bits: payload length 1..8, bit 0x80: negative), then
  the magnitude little-endian;
- floats: an integer mantissa then an integer exponent, value = mantissa * 2**exponent;
- strings: integer length, then bytes; bools: ASCII '1' or '0';
- tensors: version 2, then num_samples, k, nr, nc, then that many float32 values (NCHW);
- a network nests outside-in: ``add_loss_layer`` (version 1, loss details, subnet);
  ``add_layer`` (version 2, the whole subnet, then the layer's details and bookkeeping);
  tag and skip layers (version 1, subnet); the innermost ``add_layer`` (version 3, the
  input layer, details, bookkeeping, sample expansion factor). Layer details therefore
  appear input side first. Tag ids are not stored: the wiring comes from the C++ type,
  so callers match the layer sequence against a known topology.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import WeightFormatError

INF_EXPONENTS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


@dataclass(frozen=True)
class DatLayer:
    """One computational layer: its tag (``con_``, ``affine_``, ...), fields and tensors."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None
    offset: int = 0


@dataclass(frozen=True)
class DatNetwork:
    loss: DatLayer
    input: DatLayer
    layers: tuple[DatLayer, ...]
    """Input side first."""


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, message: str) -> WeightFormatError:
        return WeightFormatError(f"{self.name}: {message} at byte {self.pos} of {len(self.data)}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated file: needed {n} more bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent in INF_EXPONENTS:
            return INF_EXPONENTS[exponent]
        return float(mantissa) * 2.0**exponent

    def boolean(self) -> bool:
        value = self.take(1)
        if value not in (b"0", b"1"):
            raise self.fail(f"bad bool {value!r}")
        return value == b"1"

    def string(self) -> str:
        length = self.integer()
        if not 0 <= length <= 1024:
            raise self.fail(f"implausible string length {length}")
        try:
            return self.take(length).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII layer name") from None

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise self.fail(f"unknown tensor version {version}")
        shape = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        version = self.integer()
        if version != 1:
            raise self.fail(f"unknown alias_tensor version {version}")
        return tuple(self.integer() for _ in range(4))


# --- layer details ----------------------------------------------------------------------


def _con(r: _Reader, kind: str) -> DatLayer:
    params = r.tensor()
    fields: dict[str, Any] = {"num_filters": r.integer()}
    fields["nr"], fields["nc"] = r.integer(), r.integer()
    fields["stride_y"], fields["stride_x"] = r.integer(), r.integer()
    fields["padding_y"], fields["padding_x"] = r.integer(), r.integer()
    fields["filters_shape"] = r.alias()
    fields["biases_shape"] = r.alias()
    for _ in range(4):
        r.real()  # learning-rate and weight-decay multipliers
    fields["use_bias"] = r.boolean() if kind in ("con_5", "con_6") else True
    if kind == "con_6":
        fields["use_relu"] = r.boolean()
    return DatLayer("con", fields, params)


def _affine(r: _Reader, kind: str) -> DatLayer:
    params = r.tensor()
    r.alias()
    r.alias()
    fields = {"mode": r.integer()}
    if kind == "affine_2":
        fields["disabled"] = r.boolean()
    return DatLayer("affine", fields, params)


def _bn(r: _Reader, kind: str) -> DatLayer:
    """Training-form batch norm: converted to the inference affine form, as dlib does."""
    params = r.tensor()
    r.alias()
    r.alias()
    r.tensor()  # means
    r.tensor()  # invstds
    running_means = r.tensor().reshape(-1)
    running_vars = r.tensor().reshape(-1)
    r.integer()  # num_updates
    r.integer()  # running_stats_window_size
    for _ in range(4):
        r.real()
    eps = r.real()
    gamma, beta = np.split(params.reshape(-1), 2)
    g = gamma / np.sqrt(running_vars + eps)
    folded = np.concatenate([g, beta - g * running_means]).astype(np.float32)
    return DatLayer("affine", {"mode": 0 if kind == "bn_con2" else 1}, folded)


def _relu(r: _Reader, kind: str) -> DatLayer:
    fields = {"disabled": r.boolean()} if kind == "relu_2" else {}
    return DatLayer("relu", fields)


def _pool(r: _Reader, kind: str) -> DatLayer:
    fields = {
        "nr": r.integer(), "nc": r.integer(),
        "stride_y": r.integer(), "stride_x": r.integer(),
        "padding_y": r.integer(), "padding_x": r.integer(),
    }
    return DatLayer("max_pool" if kind.startswith("max") else "avg_pool", fields)


def _add_prev(r: _Reader, kind: str) -> DatLayer:
    return DatLayer("add_prev")


def _fc(r: _Reader, kind: str) -> DatLayer:
    fields: dict[str, Any] = {"num_outputs": r.integer(), "num_inputs": r.integer()}
    params = r.tensor()
    r.alias()
    r.alias()
    fields["bias_mode"] = r.integer()
    for _ in range(4):
        r.real()
    if kind == "fc_3":
        fields["use_bias"] = r.boolean()
    return DatLayer("fc", fields, params)


LAYER_READERS = {
    "con_4": _con, "con_5": _con, "con_6": _con,
    "affine_": _affine, "affine_2": _affine,
    "bn_con2": _bn, "bn_fc2": _bn,
    "relu_": _relu, "relu_2": _relu,
    "max_pool_2": _pool, "avg_pool_2": _pool,
    "add_prev_": _add_prev,
    "fc_2": _fc, "fc_3": _fc,
}


def _layer(r: _Reader) -> DatLayer:
    offset = r.pos
    kind = r.string()
    reader = LAYER_READERS.get(kind)
    if reader is None:
        raise r.fail(f"unsupported layer type {kind!r}")
    layer = reader(r, kind)
    return DatLayer(layer.kind, layer.fields, layer.params, offset)


def _input(r: _Reader) -> DatLayer:
    offset = r.pos
    kind = r.string()
    if kind != "input_rgb_image_sized":
        raise r.fail(f"unsupported input layer {kind!r}")
    mean = (r.real(), r.real(), r.real())
    return DatLayer("input_rgb_image_sized", {"mean": mean, "nr": r.integer(), "nc": r.integer()}, offset=offset)


def _loss(r: _Reader) -> DatLayer:
    offset = r.pos
    kind = r.string()
    if kind == "loss_metric_2":
        return DatLayer("loss_metric", {"margin": r.real(), "distance_threshold": r.real()}, offset=offset)
    if kind == "loss_metric_":
        return DatLayer("loss_metric", {"margin": 0.1, "distance_threshold": 0.75}, offset=offset)
    raise r.fail(f"unsupported loss layer {kind!r}")


def _bookkeeping(r: _Reader) -> None:
    for _ in range(3):
        r.boolean()  # setup_called, gradient_input_is_stale, output_and_gradient_disabled
    for _ in range(3):
        r.tensor()  # x_grad, cached_output, params_grad / grad_final


def _subnet(r: _Reader, layers: list[DatLayer]) -> DatLayer:
    """Read a subnet; append its computational layers input side first; return the input layer."""
    wrappers: list[int] = []
    # Versions nest outside-in; read them iteratively (the file has ~130 levels).
    while True:
        version = r.integer()
        if version == 3:
            break
        if version not in (1, 2):
            raise r.fail(f"unknown layer wrapper version {version}")
        wrappers.append(version)
    input_layer = _input(r)
    layers.append(_layer(r))
    _bookkeeping(r)
    sample_expansion = r.integer()
    if sample_expansion != 1:
        raise r.fail(f"unsupported sample expansion factor {sample_expansion}")
    for version in reversed(wrappers):
        if version == 2:  # add_layer: its details follow its subnet
            layers.append(_layer(r))
            _bookkeeping(r)
        # version 1: tag or skip layer, no details of its own
    return input_layer


def read_dat(path: Path) -> DatNetwork:
    """Parse a dlib DNN file with a metric loss (the face-recognition network)."""
    r = _Reader(path.read_bytes(), str(path))
    version = r.integer()
    if version != 1:
        raise r.fail(f"not a dlib network file (loss layer version {version})")
    loss = _loss(r)
    layers: list[DatLayer] = []
    input_layer = _subnet(r, layers)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return DatNetwork(loss, input_layer, tuple(layers))
