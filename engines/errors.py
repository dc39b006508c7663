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
