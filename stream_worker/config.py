"""The one configuration of every ``facestream`` command, built once at start-up.

Sources, lowest to highest precedence:

1. the defaults declared on the fields below (and on the engine and gallery sections);
2. a YAML file (``--config F.yaml``);
3. environment variables, one scheme for every setting: ``FACESTREAM__<SECTION>__<KEY>``
   (``FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES=2``, ``FACESTREAM__KAFKA__BOOTSTRAP_SERVERS=k1:9092``);
4. command-line flags (``--device cpu`` sets ``runtime.device``).

Types are strict: a bool is not an integer, ``2.0`` is not an integer, NaN is not a
number; environment values are read as YAML scalars for numbers, as plain text for text
and paths, and switches as 1/0, true/false, yes/no or on/off. Every value is range-checked, and a bad or unknown setting stops
start-up with its dotted name and where it came from. Secrets (``kafka.sasl_password``,
``api.token``) are read only from the environment and never printed.

Loading the configuration imports pydantic and YAML, not the pipeline, OpenCV, ONNX
Runtime or FAISS. ``facestream <command> --print-config`` prints the effective
configuration.
"""

from __future__ import annotations

import json
import os
import socket
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel as _BaseModel
from pydantic import Field, SecretStr, ValidationError, model_validator

from engines.config import (
    Bool,
    ConfigModel,
    DetectorConfig,
    Float,
    Int,
    RuntimeConfig,
    StoreConfig,
    describe_error,
)
from engines.errors import ConfigError
from gallery.config import ApiConfig, IndexConfig, SightingsConfig

ENV_PREFIX = "FACESTREAM__"

RETIRED_ENV = {
    "FACESTREAM_HOME": "FACESTREAM__MODELS__HOME",
    "FACESTREAM_AUTO_FETCH": "FACESTREAM__MODELS__AUTO_FETCH",
    "FACESTREAM_WHEELHOUSE": "FACESTREAM__MODELS__WHEELHOUSE",
    "FACESTREAM_FORCE_CPU": "FACESTREAM__RUNTIME__FORCE_CPU",
    "FACESTREAM_DEVICE": "FACESTREAM__RUNTIME__DEVICE",
    "FACESTREAM_GALLERY_DB": "FACESTREAM__GALLERY__PATH",
    "FACESTREAM_API_TOKEN": "FACESTREAM__API__TOKEN",
    "FACESTREAM_KAFKA_BOOTSTRAP": "FACESTREAM__KAFKA__BOOTSTRAP_SERVERS",
    "FACESTREAM_KAFKA_PASSWORD": "FACESTREAM__KAFKA__SASL_PASSWORD",
}
"""Variables of the earlier two-scheme configuration: setting one is an error that names its
replacement, so a stale deployment fails at start-up instead of silently losing a setting."""


class Pacing(str, Enum):
    AUTO = "auto"
    """Files: all; live sources (rtsp, http, webcams): realtime."""
    ALL = "all"
    """Every frame is processed; the source waits when the pipeline is behind."""
    REALTIME = "realtime"
    """When the pipeline falls behind, the oldest queued frames are dropped and counted."""


class StreamConfig(ConfigModel):
    """Sources of ``facestream run``."""

    pacing: Pacing = Pacing.AUTO
    """``all``: every frame (the source waits for the pipeline); ``realtime``: the oldest
    queued frames are dropped and counted when the pipeline falls behind; ``auto``: all for
    files, realtime for live sources."""
    queue_frames: Int = Field(8, ge=1, le=10_000)
    """Frames buffered per stream between decoding and the pipeline."""
    reconnect_min_ms: Int = Field(500, ge=1)
    """First wait before reconnecting to a live source; doubles up to ``reconnect_max_ms``."""
    reconnect_max_ms: Int = Field(30_000, ge=1)
    """Longest wait between reconnection attempts."""
    open_timeout_ms: Int = Field(10_000, ge=1)
    """Give up one connection attempt (or a stalled read) after this long."""
    recovery_reference: Path | None = None
    """A complete MP4 recording from the same camera (same resolution and encoder settings).
    An MP4 cut short before its index was written, whose encoder did not repeat the decoder's
    parameters in the stream, is played with this file's (see stream_worker.local.recovery)."""
    retries: Int = Field(3, ge=0, le=100)
    """``facestream run``: times a pipeline step that failed for a reason that is not the
    input's (a model, the gallery) is retried before the run ends."""
    retry_backoff_ms: Int = Field(500, ge=1)
    """First wait before such a retry; doubles with each."""

    @model_validator(mode="after")
    def _backoff(self) -> StreamConfig:
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self


class TrackerConfig(ConfigModel):
    """Face tracking within one stream (:mod:`stream_worker.pipeline.tracker`)."""

    min_hits: Int = Field(3, ge=1)
    """Matches before a track is confirmed (and gets an id in the output)."""
    max_missed_frames: Int = Field(45, ge=0)
    """Frames a confirmed track survives without a match (occlusion, missed detection)."""
    min_iou: Float = Field(0.1, ge=0, le=1)
    """Smallest overlap with the predicted box that allows a match on position alone."""
    reacquire_distance: Float = Field(2.0, ge=0)
    """After a miss, a face this many box sides from the prediction may rejoin by appearance."""
    min_cosine: Float | None = Field(None, ge=-1, le=1)
    """Below this embedding similarity a face never joins a track, however it overlaps. None:
    the score 1% of different people reach with the recognizer (dlib 0.911, SFace 0.237; with
    dlib on the shared clip, 99% of correct matches score >= 0.93 against their track, the
    wrong ones seen at scene cuts 0.86-0.91). A split track is better than a wrong name."""
    reacquire_cosine: Float | None = Field(None, ge=-1, le=1)
    """Similarity needed to rejoin a track by appearance when the boxes do not overlap. None:
    the score 0.1% of different people reach with the recognizer (dlib 0.928, SFace 0.315)."""
    max_size_ratio: Float = Field(1.6, ge=1)
    """A face whose size differs from the track's prediction by more than this factor is
    another face (a cut to a close-up, someone in front)."""
    appearance_weight: Float = Field(0.5, ge=0, le=1)
    """Share of appearance (vs overlap) in the matching cost."""
    embedding_momentum: Float = Field(0.8, ge=0, lt=1)
    """Weight of the past in a track's running embedding."""


class IdentifyConfig(ConfigModel):
    """Identity per track (:mod:`stream_worker.pipeline.track_state`)."""

    min_quality: Float = Field(0.2, ge=0, le=1)
    """Faces below this quality are never searched. Low quality costs misses, not false
    matches: CelebA test faces shrunk to 28-36 px and blurred (quality 0.2-0.3) match other
    people at 0.6e-4 to 4e-4 at the calibrated threshold, under the 1e-3 it is set for
    (``benchmarks/eval_small_faces.py``; README, "Recognizers")."""
    search_quality_gain: Float = Field(0.05, ge=0, le=1)
    """Search again when the track's best quality improves by this much."""
    switch_ratio: Float = Field(1.5, ge=1)
    """A named track changes identity only when another's vote weight is this many times its own."""
    age_window: Int = Field(64, ge=1, le=100_000)
    """Most recent (age, quality) samples kept per track for the robust age."""


class PipelineConfig(ConfigModel):
    """Schedules of the per-frame pipeline (:mod:`stream_worker.pipeline`)."""

    detect_every_frames: Int = Field(5, ge=1)
    """Full detection on every n-th frame of a stream; refinement of tracked faces between."""
    analyze_every_frames: Int = Field(5, ge=1)
    """A tracked face is analysed (embedding, age, gender, sharpness) at least every n-th frame;
    always on full-detection frames and while its track is unconfirmed."""
    scene_cut_mad: Float = Field(20.0, ge=0)
    """Mean absolute difference (grey levels, 64x36 thumbnails) between consecutive frames
    above which the frame is a scene cut: full detection and analysis. 0: never."""
    thumbnail_size_px: Int = Field(160, ge=16, le=4096)
    """Longest side of a best-shot JPEG."""
    tracker: TrackerConfig = TrackerConfig()
    identify: IdentifyConfig = IdentifyConfig()


class GalleryConfig(ConfigModel):
    """The gallery a worker identifies against, and where ``facestream gallery`` works."""

    path: Path | None = None
    """Gallery database; none: faces are tracked but not identified."""
    threshold: Float | None = Field(None, ge=-1, le=1)
    """Override the gallery's decision threshold (cosine, in [-1, 1])."""
    copy_dir: Path | None = None
    """``facestream consume`` without ``path`` keeps its gallery, replayed from the changelog,
    in a folder of its own under this one (biometric data: choose where it may live); the
    folder is removed when the worker stops, and copies left by killed workers are removed
    at start. None: the system's temporary folder."""
    index: IndexConfig = IndexConfig()


class MetricsConfig(ConfigModel):
    port: Int = Field(0, ge=0, le=65535)
    """Serve /metrics (Prometheus) and /health on this port; 0: off."""
    host: str = "127.0.0.1"
    """Address the metrics server listens on (0.0.0.0 for probes from outside a pod)."""


class KafkaConfig(ConfigModel):
    """Kafka topics and client settings (``consume``, ``produce``, ``tail``, ``run --kafka-out``
    and ``gallery --publish``)."""

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    """Comma-separated host:port list."""
    frames_topic: str = "faces.frames"
    """Input: one image or encoded video chunk per message, keyed by stream id."""
    detections_topic: str = "faces.detections"
    """Every processed frame's result (facestream.frame/2)."""
    tracks_topic: str = "faces.tracks"
    """Track events (facestream.track/3)."""
    alerts_topic: str = "faces.alerts"
    """Watch-list hits: every track identified as (or changed to) a gallery identity."""
    dead_letter_topic: str = "faces.dead-letter"
    """Input that is at fault, with the original key, value and headers and a reason."""
    thumbnails_topic: str = "faces.thumbnails"
    """Each ended track's best-shot JPEG, keyed ``<stream>:track:<id>``, which its summary's
    ``best_shot.thumbnail`` refers to as ``kafka:<topic>/<key>`` (unless the worker writes
    best shots to a --thumbnails folder); empty: off."""
    embeddings_topic: str = "faces.embeddings"
    """Each ended track's embeddings and best shot (facestream.track-embeddings/2), keyed by
    stream id, for the sightings service: biometric data, kept off the tracks topic so that
    consumers that must not see it never read it; empty: off."""
    sightings_group_id: str = Field("facestream-sightings", min_length=1)
    """The consumer group of ``facestream sightings serve`` (on the embeddings topic)."""
    gallery_topic: str = "faces.gallery"
    """Compacted gallery changelog (enrolments, tombstones, erasure events); empty: off."""
    state_topic: str = "faces.worker-state"
    """Compacted per-partition checkpoints of tracker state (see stream_worker.kafka)."""
    group_id: str = Field("facestream", min_length=1)
    """The workers' consumer group (and the prefix of their checkpoint keys)."""
    client_id: str = ""
    """Defaults to facestream-<host>-<pid>."""
    session_timeout_ms: Int = Field(10_000, ge=1)
    """A worker silent this long leaves the group; its partitions go to the others."""
    heartbeat_interval_ms: Int = Field(1_000, ge=1)
    """At most a third of ``session_timeout_ms``."""
    max_poll_interval_ms: Int = Field(60_000, ge=1)
    """A worker that takes longer than this between polls leaves the group; one poll's
    records (max_poll_records) must be processed well within it."""
    max_poll_records: Int = Field(64, ge=1)
    """Records per poll (64 lets one poll span partitions, so cameras are batched together)."""
    max_poll_frames: Int = Field(64, ge=1)
    """Frames taken per poll: fewer records when they are video chunks of many frames."""
    max_message_bytes: Int = Field(1_000_000, ge=1024)
    """Input messages above this size are dead letters (Apache Kafka's default message.max.bytes is
    about 1 MB: raise both together)."""
    request_timeout_ms: Int = Field(30_000, ge=1)
    """One request to a broker; at most ``delivery_timeout_ms``."""
    delivery_timeout_ms: Int = Field(300_000, ge=1)
    """How long the producer retries a result through a broker outage before the worker
    rewinds to its last checkpoint and processes the frames again."""
    checkpoint_interval_ms: Int = Field(1_000, ge=1)
    """How often results are flushed, offsets committed and pipeline state checkpointed:
    the most a take-over replays."""
    retry_backoff_min_ms: Int = Field(500, ge=1)
    """After a failure that is not the input's fault (a model, the gallery, the broker), the
    worker goes back to its last checkpoint and retries after this long, doubling up to
    ``retry_backoff_max_ms``; /health says ``failing`` meanwhile."""
    retry_backoff_max_ms: Int = Field(30_000, ge=1)
    """Longest wait between such retries (and at most half of ``max_poll_interval_ms``)."""
    idempotent_producer: Bool = True
    """Idempotent producers (Kafka >= 0.11; with ACLs, the IdempotentWrite permission): the
    broker drops a batch resent after a lost acknowledgement, so internal retries never
    duplicate a message. Off: one request in flight per connection keeps the order."""
    create_topics: Bool = True
    """Create missing topics at start-up (compacted ones compacted)."""
    frames_partitions: Int = Field(4, ge=1)
    """Partitions of the frames topic when the worker creates it."""
    replication_factor: Int = Field(1, ge=1)
    """Replicas of the topics the worker creates."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str = ""
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL."""
    sasl_username: str = ""
    """SASL user (its password: `kafka.sasl_password`)."""
    sasl_password: SecretStr = ""  # type: ignore[assignment]  # (validated into a SecretStr)
    """Read only from the environment (``FACESTREAM__KAFKA__SASL_PASSWORD``); never printed."""

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConfig:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.request_timeout_ms > self.delivery_timeout_ms:
            raise ValueError("request_timeout_ms must not exceed delivery_timeout_ms")
        if self.retry_backoff_max_ms < self.retry_backoff_min_ms:
            raise ValueError("retry_backoff_max_ms must be >= retry_backoff_min_ms")
        return self

    @property
    def client_name(self) -> str:
        return self.client_id or f"facestream-{socket.gethostname()}-{os.getpid()}"


class FaceStreamConfig(ConfigModel):
    """Every setting of every ``facestream`` command, by section."""

    runtime: RuntimeConfig = RuntimeConfig()
    models: StoreConfig = StoreConfig()
    detector: DetectorConfig = DetectorConfig()
    stream: StreamConfig = StreamConfig()
    pipeline: PipelineConfig = PipelineConfig()
    gallery: GalleryConfig = GalleryConfig()
    metrics: MetricsConfig = MetricsConfig()
    kafka: KafkaConfig = KafkaConfig()
    api: ApiConfig = ApiConfig()
    sightings: SightingsConfig = SightingsConfig()


SECRETS = {("kafka", "sasl_password"), ("api", "token"), ("api", "sightings_token")}
"""Settings read only from the environment."""


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path)


# --- loading ---------------------------------------------------------------------------------


def _field(path: tuple[str, ...]) -> tuple[Any, bool] | None:
    """The annotation of the setting at ``path`` and whether it is optional; None if there is none."""
    model: Any = FaceStreamConfig
    annotation: Any = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, _BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    return annotation, optional


_BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
"""How a switch is written in an environment variable (the file takes YAML's true and false only)."""


def _env_value(path: tuple[str, ...], raw: str) -> Any:
    """An environment value for a setting: plain text for text, paths and secrets; a YAML
    scalar for numbers, bools and lists; empty means none where none is allowed."""
    found = _field(path)
    if found is None:
        return raw  # unknown: refused by validation, with its name
    annotation, optional = found
    if raw == "" and optional:
        return None
    if annotation in (str, Path, SecretStr):
        return raw
    if annotation is bool and raw.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[raw.strip().lower()]
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def _merge(base: dict[str, Any], extra: Mapping[str, Any], origin: str, origins: dict[tuple[str, ...], str],
           where: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        path = (*where, str(key))
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, origin, origins, path)
        else:
            out[key] = value
            origins[path] = origin
    return out


def _leaves(values: Mapping[str, Any], where: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in values.items():
        path = (*where, str(key))
        out += _leaves(value, path) if isinstance(value, Mapping) else [path]
    return out


def _from_environment(env: Mapping[str, str], origins: dict[tuple[str, ...], str]) -> dict[str, Any]:
    retired = sorted(name for name in RETIRED_ENV if name in env)
    if retired:
        raise ConfigError("; ".join(f"{name} is no longer read: set {RETIRED_ENV[name]} instead" for name in retired))
    values: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__") if part)
        if not path:
            continue
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:-1])} is a setting, not a section")
        node[path[-1]] = _env_value(path, raw)
        origins[path] = f"environment {name}"
    return values


def _from_file(file: Path, origins: dict[tuple[str, ...], str]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(file).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {file}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file}: not valid YAML ({exc})") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {file}: the top level must be a mapping of sections")
    secrets = sorted(".".join(p) for p in _leaves(loaded) if p in SECRETS)
    if secrets:
        raise ConfigError(f"config file {file}: {', '.join(secrets)} may only come from the environment "
                          f"({', '.join(env_name(tuple(s.split('.'))) for s in secrets)})")
    return _merge({}, loaded, f"file {file}", origins)


def load_config(
    file: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> FaceStreamConfig:
    """Defaults, then ``file`` (YAML), then the environment, then ``flags`` (nested by
    section, as the command line set them), validated strictly into one
    :class:`FaceStreamConfig`."""
    origins: dict[tuple[str, ...], str] = {}
    values: dict[str, Any] = {}
    if file is not None:
        values = _from_file(file, origins)
    values = _merge(values, _from_environment(os.environ if env is None else env, origins), "", {})
    values = _merge(values, flags or {}, "command line", origins)
    try:
        return FaceStreamConfig.model_validate_json(json.dumps(values, default=str), strict=True)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origins)) from None


def _explain(exc: ValidationError, origins: dict[tuple[str, ...], str]) -> str:
    """Each bad setting with where it came from (and, for an unknown one, the valid names)."""
    lines = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"])
        line = describe_error(error)
        if error["type"] == "extra_forbidden":
            found = _field(path[:-1]) if len(path) > 1 else (FaceStreamConfig, False)
            if found is not None and isinstance(found[0], type) and issubclass(found[0], _BaseModel):
                line += f" (valid: {', '.join(sorted(found[0].model_fields))})"
        origin = next((origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None)
        if origin is None:  # a check across a section's settings: where they came from
            origin = ", ".join(sorted({o for p, o in origins.items() if p[:len(path)] == path})) or None
        lines.append(f"{line} (from {origin})" if origin else line)
    return "invalid configuration: " + "; ".join(lines)


def as_dict(config: FaceStreamConfig) -> dict[str, Any]:
    """The configuration as plain data, secrets masked (for --print-config)."""
    return config.model_dump(mode="json")


__all__ = [
    "FaceStreamConfig", "GalleryConfig", "IdentifyConfig", "KafkaConfig", "MetricsConfig", "Pacing", "PipelineConfig",
    "StreamConfig", "TrackerConfig", "as_dict", "env_name", "load_config",
]


# --- the settings reference in the README ---------------------------------------------------

README_START = "<!-- settings: generated by `python -m stream_worker.config --readme README.md` -->"
README_END = "<!-- /settings -->"


def _rows(model: type[_BaseModel], where: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
    rows = []
    defaults = model()
    for name, info in model.model_fields.items():
        path = (*where, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, _BaseModel):
            rows += _rows(annotation, path)
            continue
        value = getattr(defaults, name)
        if isinstance(value, SecretStr):
            shown = "(secret; environment only)"
        elif isinstance(value, Enum):
            shown = f"`{value.value}`"
        elif isinstance(value, bool):
            shown = f"`{str(value).lower()}`"
        elif value is None or value == "":
            shown = "none"
        elif isinstance(value, tuple):
            shown = "`" + ", ".join(str(v) for v in value) + "`"
        else:
            shown = f"`{value}`"
        text = " ".join((info.description or "").split()).replace("|", "\\|").replace("``", "`")
        rows.append((".".join(path), env_name(path), shown, text))
    return rows


def settings_reference() -> str:
    """Every setting as a Markdown table: name, environment variable, default, meaning."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{name}` | `{env}` | {default} | {text} |" for name, env, default, text in _rows(FaceStreamConfig)]
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Print the settings reference, or write it into a README.")
    parser.add_argument("--readme", type=Path, help="replace the generated section of this file")
    args = parser.parse_args(argv)
    table = settings_reference()
    if args.readme is None:
        print(table)
        return 0
    text = args.readme.read_text()
    start, end = text.index(README_START), text.index(README_END)
    args.readme.write_text(text[: start + len(README_START)] + "\n\n" + table + "\n\n" + text[end:])
    print(f"updated {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
