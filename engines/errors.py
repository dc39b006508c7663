"""Error types shared by every FaceStream package.

Each error class declares how a worker should react to it, as class attributes, so
one supervisor loop can decide without string matching (the aiokafka model):

- ``retriable``: the same operation may succeed later (network, broker, device busy).
- ``skippable``: the input item is bad; drop it (to a dead-letter topic where there
  is one) and carry on with the next item.
- neither: fatal for the component; fix configuration or installation and restart.

Messages say what happened and what to do about it.
"""

from __future__ import annotations

from enum import Enum


class FaceStreamError(Exception):
    """Root of every error FaceStream raises on purpose."""

    retriable: bool = False
    skippable: bool = False


class ConfigError(FaceStreamError):
    """A configuration value is missing, malformed or out of range."""


# --- bad input: skip the item, keep the worker running ---------------------------


class InvalidImageError(FaceStreamError, ValueError):
    """An image is empty, corrupt, or not an 8-bit grayscale/colour array."""

    skippable = True


class ImageTooLargeError(InvalidImageError):
    """An image exceeds the configured pixel limit and the policy is to refuse it."""


# --- model store -----------------------------------------------------------------


class ModelStoreError(FaceStreamError):
    """Base class for problems with the local model cache."""


class ModelNotAvailableError(ModelStoreError):
    """Weights are not in the cache and fetching on first use is disabled."""


class ModelFetchError(ModelStoreError):
    """Downloading a weight package failed (no network, index unreachable, pip error)."""

    retriable = True


class ChecksumMismatchError(ModelStoreError):
    """A downloaded or cached file does not have the sha256 declared in the code."""


class WeightFormatError(ModelStoreError):
    """A weight file does not have the layout the converter expects."""


# --- inference backends ----------------------------------------------------------


class BackendError(FaceStreamError):
    """An inference backend could not be created or failed while running."""


class BackendUnavailableError(BackendError):
    """The requested backend or device is not installed or not present on this machine."""


class ProviderMismatchError(BackendError):
    """The runtime loaded different execution providers than were requested."""


# --- what a worker does about an error ------------------------------------------------------


class Failure(str, Enum):
    """What a worker does with an item whose processing raised."""

    SKIP = "skip"
    """The input's fault: dead-letter (or skip) the item, count it, carry on."""
    RETRY = "retry"
    """Not the input's fault, and it may pass (a model or device fault, the broker, memory):
    keep the item, go back to the last safe point, report unhealthy, retry with backoff."""
    FATAL = "fatal"
    """Not the input's fault, and retrying cannot help (configuration, installation, a damaged
    gallery): stop without committing past the item."""


def classify(exc: BaseException) -> Failure:
    """The one decision both workers act on. FaceStream's own errors say what they are
    (``skippable``, ``retriable``); anything else (a bug, an ONNX Runtime or CUDA fault, out
    of memory) is never blamed on the input: good data must not be dead-lettered."""
    if isinstance(exc, FaceStreamError):
        if exc.skippable:
            return Failure.SKIP
        return Failure.RETRY if exc.retriable else Failure.FATAL
    if isinstance(exc, Exception):
        return Failure.RETRY
    return Failure.FATAL  # KeyboardInterrupt, SystemExit


class PipelineFailedError(FaceStreamError):
    """The pipeline kept failing on input that is not at fault; the message names the frame
    and the cause (the log has the traceback)."""
