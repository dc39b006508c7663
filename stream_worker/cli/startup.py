"""Start-up shared by ``facestream run`` and ``facestream consume``: the configuration
from flags, the models, gallery and pipeline, and a stop event for SIGINT and SIGTERM."""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import ConfigError
from stream_worker.cli.options import embedding_space, model_store
from stream_worker.config import FaceStreamConfig
from stream_worker.kafka.wire import thumbnail_reference
from stream_worker.pipeline.frames import InvalidStreamIdError, check_stream_id, stream_id_from

if TYPE_CHECKING:  # (imported by build_pipeline when a worker starts)
    from engines.runtime.engine import EngineRuntime
    from gallery.gallery import Gallery
    from stream_worker.local.sinks import ThumbnailSink
    from stream_worker.pipeline.face_pipeline import FacePipeline, ThumbnailRef


def parse_sources(specs: list[str]) -> list[tuple[str, str]]:
    """``[ID=]URI`` -> (stream id, uri). An id given is checked (never altered) and may be
    given once; an id taken from the file name has other characters replaced and a suffix
    when two files share a name. Bad or repeated ids are refused before anything starts."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, spec in enumerate(specs, 1):
        head, sep, tail = spec.partition("=")
        if sep and "://" not in head and "/" not in head and head:
            stream_id, uri = head, tail
            try:
                check_stream_id(stream_id)
            except InvalidStreamIdError as exc:
                raise ConfigError(f"--source {spec}: {exc}") from None
            if stream_id in seen:
                raise ConfigError(f"--source {spec}: stream id {stream_id!r} is given twice; each stream needs its own")
        else:
            uri = spec
            local_name = Path(uri.split("?")[0].rstrip("/")).stem if "://" not in uri else ""
            base = stream_id_from(local_name, f"stream{n}")
            stream_id, k = base, 2
            while stream_id in seen:
                stream_id, k = f"{base[:60]}-{k}", k + 1
        if not uri:
            raise ConfigError(f"--source {spec}: no URI after the stream id")
        seen.add(stream_id)
        out.append((stream_id, uri))
    return out


class StopSignal(threading.Event):
    """Set by SIGINT or SIGTERM (finish cleanly: end tracks, flush, commit); remembers which."""

    signal: int | None = None

    def receive(self, signum: int, _frame: object = None) -> None:
        self.signal = signum
        self.set()


def stop_on_signals() -> StopSignal:
    """An event that SIGINT and SIGTERM set."""
    stop = StopSignal()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.receive)
    return stop


def _no_reference(stream_id: str, track_id: int) -> None:
    return None


def build_pipeline(
    config: FaceStreamConfig, runtime: EngineRuntime, *, gallery_path: Path | None,
    create_gallery: bool, thumbnails: ThumbnailSink | None, thumbnails_topic: str = "",
) -> tuple[FacePipeline, Gallery | None]:
    """The models, the gallery (its index on the engine's device) and the pipeline. Track
    summaries refer to best shots in the ``thumbnails`` folder, else on ``thumbnails_topic``."""
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.network import MultiTaskNet
    from engines.runtime.device import Device
    from gallery.gallery import Gallery
    from stream_worker.pipeline.face_pipeline import FacePipeline

    store = model_store(config)
    detector = MTCNNDetector.create(config.detector, runtime=runtime, store=store)
    multitask = MultiTaskNet.create(runtime=runtime, store=store, recognizer=config.models.recognizer,
                                    heads=config.models.heads)
    gallery = None
    if gallery_path is not None:
        index = config.gallery.index.model_copy(update={"use_gpu": runtime.plan.device is Device.CUDA})
        gallery = Gallery(gallery_path, index=index, threshold=config.gallery.threshold, create=create_gallery,
                          **embedding_space(config))
    if thumbnails is not None:
        reference: ThumbnailRef = thumbnails.reference
    elif thumbnails_topic:
        reference = functools.partial(thumbnail_reference, thumbnails_topic)
    else:
        reference = _no_reference
    pipeline = FacePipeline(detector, multitask, gallery, config.pipeline, thumbnail_ref=reference)
    return pipeline, gallery
