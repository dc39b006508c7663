"""Inference backends behind one protocol; :class:`engines.runtime.EngineRuntime` creates them."""

from engines.backends.base import BackendInfo, InferenceBackend

__all__ = ["BackendInfo", "InferenceBackend"]
