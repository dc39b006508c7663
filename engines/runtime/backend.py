"""The inference-backend contract: named tensors in, named tensors out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    """What a backend actually loaded, for logs, health output and metrics."""

    model: str
    backend: str
    backend_version: str
    device: str
    providers: tuple[str, ...]
    requested_providers: tuple[str, ...]
    fallback: bool
    """True when the runtime loaded a different device than planned (a warning was logged)."""
    threads: str

    def describe(self) -> str:
        text = f"{self.model}: {self.backend} {self.backend_version} on {self.device} via {', '.join(self.providers)}"
        if self.fallback:
            text += f" (FALLBACK: requested {', '.join(self.requested_providers)})"
        return f"{text}; threads {self.threads}"


@runtime_checkable
class InferenceBackend(Protocol):
    """A loaded network. Implementations return raw outputs only; decoding is elsewhere."""

    info: BackendInfo
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network; ``outputs`` defaults to all of them."""
        ...
