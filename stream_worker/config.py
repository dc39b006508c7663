"""Worker configuration: defaults, then a YAML file, then environment variables; validated
once at start-up into nested, frozen dataclasses, and passed down.

Environment variables name a field by its path: ``FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES=2``
sets ``pipeline.detect_every_frames``. Values are parsed as YAML scalars (``2``, ``0.5``,
``true``, ``cpu``). Unknown keys are errors that list the valid ones.

``facestream run --print-config`` shows the effective configuration (no secrets are kept in
it: credentials come only from their own environment variables).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engines.config import DetectorConfig, RuntimeConfig
from engines.errors import ConfigError
from gallery.index import IndexConfig
from stream_worker.kafka.client import KafkaConfig
from stream_worker.pipeline.face_pipeline import PipelineConfig
from stream_worker.pipeline.track_state import IdentifyConfig
from stream_worker.pipeline.tracker import TrackerConfig

ENV_PREFIX = "FACESTREAM__"


class Pacing(str, enum.Enum):
    AUTO = "auto"
    """Files: all; live sources (rtsp, http, webcams): realtime."""
    ALL = "all"
    """Every frame is processed; the source waits when the pipeline is behind."""
    REALTIME = "realtime"
    """When the pipeline falls behind, the oldest queued frames are dropped and counted."""


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    pacing: Pacing = Pacing.AUTO
    queue_frames: int = 8
    """Frames buffered per stream between decoding and the pipeline."""
    reconnect_min_ms: int = 500
    """First wait before reconnecting to a live source; doubles up to ``reconnect_max_ms``."""
    reconnect_max_ms: int = 30_000
    open_timeout_ms: int = 10_000
    """Give up one connection attempt (or a stalled read) after this long."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pacing", Pacing(self.pacing))
        if self.queue_frames < 1 or self.reconnect_min_ms < 1 or self.reconnect_max_ms < self.reconnect_min_ms:
            raise ConfigError("stream: queue_frames >= 1 and 1 <= reconnect_min_ms <= reconnect_max_ms")


@dataclass(frozen=True, kw_only=True)
class GalleryConfig:
    path: Path | None = None
    """Gallery database; none: faces are tracked but not identified."""
    threshold: float | None = None
    """Override the gallery's decision threshold (cosine)."""
    index: IndexConfig = field(default_factory=IndexConfig)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    port: int = 0
    """Serve /metrics (Prometheus) and /health on this port; 0: off."""
    host: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    """Used by ``facestream consume`` (and ``produce``/``tail`` for the broker address)."""


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Coerce a YAML/env value to a field's type, recursing into dataclasses."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or value == "":
            return None
        return _convert(value, options[0], where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(kind, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        return tuple(_convert(v, typing.get_args(kind)[0], where) for v in value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {[e.value for e in kind]}") from None
    if kind is Path:
        return Path(str(value)).expanduser()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """A config dataclass from a mapping; unknown keys and bad values are ConfigErrors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw.strip() else ""  # empty: an empty string (or None where allowed)
    return out


def load_config(
    file: Path | None = None, *, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Defaults, then ``file`` (YAML), then ``overrides`` (command-line flags), then the
    environment; validated into a :class:`WorkerConfig`."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {file}: the top level must be a mapping")
        values = _merge(values, loaded)
    values = _merge(values, overrides or {})
    values = _merge(values, _env_overrides(os.environ if env is None else env))
    return build(WorkerConfig, values)


def as_dict(config: Any) -> Any:
    """The configuration as plain data (for --print-config)."""
    if dataclasses.is_dataclass(config):
        return {f.name: as_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, enum.Enum):
        return config.value
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, tuple):
        return list(config)
    return config


__all__ = [
    "GalleryConfig", "IdentifyConfig", "KafkaConfig", "MetricsConfig", "Pacing", "StreamConfig", "TrackerConfig", "WorkerConfig",
    "as_dict", "build", "load_config",
]
