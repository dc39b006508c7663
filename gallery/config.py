"""Gallery settings: the search index and the REST API (pydantic models; importing this
module imports neither FAISS nor the web framework)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field, SecretStr

from engines.config import Bool, ConfigModel, Float, Int


class IndexConfig(ConfigModel):
    """How templates are indexed (see :mod:`gallery.index`)."""

    ivf_min_templates: Int = Field(100_000, ge=1)
    """From this many templates on, use IVF instead of exact search."""
    nlist: Int = Field(0, ge=0)
    """IVF cells; 0 = automatic: a power of two near 4 * sqrt(templates), at most 65536 and
    at most templates / 39 (FAISS's minimum of training points per cell)."""
    nprobe: Int = Field(32, ge=1)
    """IVF cells searched per query (``benchmarks/bench_gallery.py`` chose it: recall@1 >= 0.99
    at 1M identities)."""
    rerank_extra: Int = Field(8, ge=0)
    """IVF: candidates re-ranked exactly per query beyond the k asked for."""
    use_gpu: Bool = False
    """Search on a GPU copy (set by the caller from the engine runtime's device decision)."""

    def cells(self, templates: int) -> int:
        if self.nlist:
            return self.nlist
        cells = 2 ** round(math.log2(4 * math.sqrt(max(templates, 1))))
        most = 2 ** int(math.log2(max(templates // 39, 1)))
        return int(max(1, min(65536, cells, most)))


class ApiConfig(ConfigModel):
    """``facestream serve-api``: the gallery's REST API."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Int = Field(8000, ge=1, le=65535)
    """Port to listen on."""
    token: SecretStr = ""  # type: ignore[assignment]  # (validated into a SecretStr)
    """Bearer token every endpoint but /health requires (at least 16 characters). Read only
    from the environment (``FACESTREAM__API__TOKEN``); never logged or printed."""
    sightings_token: SecretStr = ""  # type: ignore[assignment]
    """Bearer token of ``/sightings/`` (search by photo over everything the cameras saw), and
    only of it: a scope of its own, different from ``token``. Read only from the environment
    (``FACESTREAM__API__SIGHTINGS_TOKEN``); never logged or printed."""
    max_upload_mb: Float = Field(10.0, gt=0, le=1024)
    """Largest request body, in MiB: larger ones get 413 before they are read in full."""
    max_image_pixels: Int = Field(40_000_000, ge=144)
    """Uploaded images whose header declares more pixels are refused (422) before decoding."""
    min_quality: Float = Field(0.5, ge=0, le=1)
    """Enrolment refuses faces below this quality."""
    inference_workers: Int = Field(0, ge=0)
    """Processes that run the models, so requests (search, enrol) served at the same time;
    0 = one per CPU (one on a GPU)."""
    queue_limit: Int = Field(32, ge=0)
    """Such requests waiting for a worker beyond those running; more get 429 at once."""
    inference_niceness: Int = Field(10, ge=0, le=19)
    """Niceness of the processes that run the models, so the event loop that answers /health
    and refuses overflow gets a core as soon as it needs one; 0: the server's own."""


@dataclass(frozen=True, kw_only=True)
class EnrolPolicy:
    min_quality: float = 0.5
    """Faces below this quality (see engines.multitask.attributes.quality_score) are refused."""
    largest_face: bool = False
    """Enrol the largest face of a photo with several faces instead of refusing it."""
    background_ratio: float = 0.3
    """A face makes a photo count as showing several people only if its side is at least
    this fraction of the largest face's side and its quality at least half the largest
    face's quality: bystanders far behind and low-confidence detections do not."""


class SightingsConfig(ConfigModel):
    """The sightings store (``run --sightings``, ``sightings serve``, ``sightings search``)."""

    min_frames: Int = Field(3, ge=1)
    """Tracks seen on fewer frames are counted, not stored."""
    min_quality: Float = Field(0.2, ge=0, le=1)
    """Tracks whose best shot is below this quality are counted, not stored."""
    retention_days: Int = Field(0, ge=0)
    """Whole days older than this are deleted (``sightings serve``: at start and hourly;
    ``sightings clean``); 0: kept until cleaned by hand."""
    visit_gap_s: Float = Field(60.0, gt=0)
    """Matching sightings on one camera less than this apart are one visit."""
