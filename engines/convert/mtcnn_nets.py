"""MTCNN P-Net, R-Net and O-Net as PyTorch modules (for conversion to ONNX only).

Layer names and shapes follow the facenet-pytorch state_dicts, so the published ``.pt``
files load directly. Inputs are NCHW RGB images normalised as (x - 127.5) / 128 in their
normal orientation (height first).

R-Net and O-Net flatten their last feature map in (width, height, channel) order before
the dense layers: an inheritance of the original MATLAB/Caffe nets, which saw transposed
images. Without that permute the dense layers produce garbage.

Two forms of each net:

- the *reference form* (as built): outputs the 2-way softmax, as published;
- the *inference form* (:func:`to_inference_form`), which is what gets exported. It is
  the same function written with cheaper operators:

  - PReLU(z) = z + (a - 1) * min(z, 0), exact for any slope a. ONNX Runtime's PRelu
    kernel runs a slow broadcast path (about 25x the time of a Mul on the same tensor) and
    was the largest cost of all three nets; Min, Mul and Add are fast.
  - The 2-way softmax becomes P(face) = sigmoid(l1 - l0), the only probability the
    cascade reads (softmax over the channel axis of P-Net's map is a strided reduction).
  - Input is NHWC, the layout OpenCV images and crops already have; the graph transposes
    to NCHW itself, so the host never copies an image just to reorder its axes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from engines.errors import WeightFormatError


class FastPReLU(nn.Module):
    """PReLU as z + (a - 1) * min(z, 0): same values, operators ONNX Runtime runs fast."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        self.register_buffer("slope_minus_one", prelu.weight.detach().clone() - 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return z + self.slope_minus_one.reshape(shape) * torch.clamp(z, max=0.0)


class _MTCNNNet(nn.Module):
    inference_form = False

    def classify(self, logits: torch.Tensor) -> torch.Tensor:
        """Reference form: softmax over the 2 classes. Inference form: P(face) only."""
        if self.inference_form:
            return torch.sigmoid(logits[:, 1] - logits[:, 0])
        return torch.softmax(logits, dim=1)


class PNet(_MTCNNNet):
    """Proposal net: fully convolutional, one output cell per 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.classify(self.conv4_1(x)), self.conv4_2(x)


class RNet(_MTCNNNet):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.classify(self.dense5_1(x)), self.dense5_2(x)


class ONet(_MTCNNNet):
    """Output net on 48x48 crops: score, box regression and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.classify(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)


class NHWCInput(nn.Module):
    """Takes (N, H, W, C) input and runs ``net`` on its (N, C, H, W) transpose."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(x.permute(0, 3, 1, 2))  # type: ignore[no-any-return]


def to_inference_form(net: _MTCNNNet) -> nn.Module:
    """The exported form of ``net``: FastPReLU, the P(face) head and NHWC input (see the
    module docstring). ``net`` itself is left unchanged."""
    fast = copy.deepcopy(net)
    for name, child in list(fast.named_children()):
        if isinstance(child, nn.PReLU):
            setattr(fast, name, FastPReLU(child))
    fast.inference_form = True
    return NHWCInput(fast).eval()


def reference_outputs(net: _MTCNNNet) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The reference form on NHWC input, outputs arranged like the inference form's."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        probs, *rest = net(x.permute(0, 3, 1, 2))
        return (probs[:, 1], *rest)

    return run


NETS: dict[str, type[_MTCNNNet]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load_state_dict_checked(module: nn.Module, state: Mapping[str, object], source: str) -> None:
    """Load weights, failing with the differing keys or shapes named."""
    expected = module.state_dict()
    if not isinstance(state, Mapping):
        raise WeightFormatError(f"{source} holds a {type(state).__name__}, expected a state_dict mapping")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightFormatError(f"{source}: missing keys {missing}, unexpected keys {unexpected}")
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise WeightFormatError(f"{source}: {key} has shape {shape}, expected {tuple(tensor.shape)}")
    module.load_state_dict(dict(state))  # type: ignore[arg-type]
    module.eval()


def load_net(kind: str, weights_path: str) -> _MTCNNNet:
    """Build ``kind`` ('pnet', 'rnet', 'onet') and load a facenet-pytorch ``.pt`` state_dict."""
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightFormatError(f"{weights_path} is not a loadable PyTorch state_dict: {exc}") from exc
    module = NETS[kind]()
    load_state_dict_checked(module, state, weights_path)
    return module
