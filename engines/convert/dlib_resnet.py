"""dlib's face-recognition ResNet rebuilt in PyTorch from a parsed ``.dat`` file.

The file stores layers but not the residual wiring, which lives in the C++ type of
dlib's ``dnn_face_recognition_ex.cpp``. The layer sequence is matched against that
grammar, record by record, and any other sequence is refused::

    stem:      con 7x7/2, affine, relu, max_pool 3x3/2
    ares:      con 3x3/1, affine, relu, con 3x3/1, affine, add_prev, relu      out = relu(block(x) + x)
    ares_down: con 3x3/2, affine, relu, con 3x3/1, affine, avg_pool 2x2/2, add_prev, relu
                                                                       out = relu(block(x) + avgpool(x))
    head:      avg_pool over everything, fc (no bias)

dlib's ``add_prev`` makes its output as large as the larger input in every dimension,
with each input at the top-left and zeros elsewhere: the smaller tensor is zero-padded at
the *end* of the channel, row and column axes. Each affine layer (inference-form batch
norm) is folded into the convolution before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.convert.dlib_dat import DatLayer, DatNetwork
from engines.errors import WeightFormatError


def _conv(con: DatLayer, affine: DatLayer) -> nn.Conv2d:
    f = con.fields
    out_ch, in_ch, kh, kw = f["filters_shape"]
    count = out_ch * in_ch * kh * kw
    if con.params is None or affine.params is None:
        raise WeightFormatError(f"con/affine pair at byte {con.offset} has no parameters")
    flat = torch.from_numpy(con.params.reshape(-1).copy())
    if flat.numel() != count + (out_ch if f["use_bias"] else 0):
        raise WeightFormatError(f"con layer at byte {con.offset}: {flat.numel()} parameters for {f['filters_shape']}")
    weight = flat[:count].reshape(out_ch, in_ch, kh, kw)
    bias = flat[count:] if f["use_bias"] else torch.zeros(out_ch)
    if affine.fields.get("mode", 0) != 0:
        raise WeightFormatError(f"affine layer at byte {affine.offset} is not per-channel (conv mode)")
    gamma, beta = torch.from_numpy(affine.params.reshape(-1).copy()).chunk(2)
    if affine.fields.get("disabled"):
        gamma, beta = torch.ones(out_ch), torch.zeros(out_ch)
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=(f["stride_y"], f["stride_x"]),
                     padding=(f["padding_y"], f["padding_x"]))
    with torch.no_grad():
        conv.weight.copy_(weight * gamma.reshape(-1, 1, 1, 1))
        conv.bias.copy_(bias * gamma + beta)
    return conv


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum over the union of shapes, missing elements counted as zero."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class Residual(nn.Module):
    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.down = conv1, conv2, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, shortcut))


class DlibFaceResNet(nn.Module):
    """Input: (N, 3, 150, 150) RGB normalised as (x - mean) / 256. Output: (N, 128) descriptors
    (dlib's raw scale, not L2-normalised)."""

    def __init__(self, stem: nn.Conv2d, pool: nn.MaxPool2d, units: list[Residual], fc: nn.Linear) -> None:
        super().__init__()
        self.stem, self.pool, self.units, self.fc = stem, pool, nn.ModuleList(units), fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.stem(x)))
        for unit in self.units:
            x = unit(x)
        return self.fc(x.mean(dim=(2, 3)))


class _Layers:
    """A cursor over the layer records that checks each against the expected kind."""

    def __init__(self, layers: tuple[DatLayer, ...]) -> None:
        self.layers, self.i = layers, 0

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.layers[j].kind if j < len(self.layers) else "<end>"

    def take(self, kind: str) -> DatLayer:
        found = self.peek()
        if found != kind:
            at = self.layers[self.i].offset if self.i < len(self.layers) else "end"
            raise WeightFormatError(
                f"layer {self.i} (byte {at}) is {found!r} where the face-recognition ResNet has {kind!r}"
            )
        self.i += 1
        return self.layers[self.i - 1]


def build_resnet(net: DatNetwork) -> DlibFaceResNet:
    """Rebuild the network; raise :class:`WeightFormatError` for any other architecture."""
    cur = _Layers(net.layers)
    stem = _conv(cur.take("con"), cur.take("affine"))
    cur.take("relu")
    mp = cur.take("max_pool").fields
    if mp["nr"] != mp["nc"] or mp["stride_y"] != mp["stride_x"]:
        raise WeightFormatError(f"unexpected max_pool {mp}")
    pool = nn.MaxPool2d(mp["nr"], mp["stride_y"], padding=mp["padding_y"])
    units = []
    while cur.peek() == "con":
        conv1 = _conv(cur.take("con"), cur.take("affine"))
        cur.take("relu")
        conv2 = _conv(cur.take("con"), cur.take("affine"))
        down = cur.peek() == "avg_pool"
        if down:
            ap = cur.take("avg_pool").fields
            if (ap["nr"], ap["nc"], ap["stride_y"], ap["stride_x"], ap["padding_y"]) != (2, 2, 2, 2, 0):
                raise WeightFormatError(f"unexpected shortcut avg_pool {ap}")
        cur.take("add_prev")
        cur.take("relu")
        units.append(Residual(conv1, conv2, down))
    head = cur.take("avg_pool").fields
    if (head["nr"], head["nc"]) != (0, 0):
        raise WeightFormatError(f"expected a global average pool before the fc layer, got {head}")
    fc_layer = cur.take("fc")
    if cur.i != len(net.layers):
        cur.take("<end>")
    f = fc_layer.fields
    if fc_layer.params is None:
        raise WeightFormatError(f"fc layer at byte {fc_layer.offset} has no parameters")
    weights = torch.from_numpy(fc_layer.params.reshape(f["num_inputs"], f["num_outputs"]).copy())
    if f["bias_mode"] != 1 or f.get("use_bias", False):
        raise WeightFormatError("the face-recognition ResNet's fc layer has no bias; this file's has one")
    fc = nn.Linear(f["num_inputs"], f["num_outputs"], bias=False)
    with torch.no_grad():
        fc.weight.copy_(weights.T)  # dlib stores [in][out] and computes x @ W
    return DlibFaceResNet(stem, pool, units, fc).eval()
