"""Faces in photos, computed in worker processes: the REST API's embedder.

The API's event loop must answer ``/health`` and refuse overflow at once while searches run.
Models running on threads of the same process share its GIL with the loop; in worker
processes they share nothing, and they run at a lower priority (``api.inference_niceness``),
so the loop gets a core whenever it needs one. Each worker process loads the detector and
the multi-task network once; a photo goes to it as bytes and comes back as the faces'
embeddings, qualities and boxes. A worker that dies (killed, out of memory) is replaced, and
the request it was serving gets a retriable error (503); the workers end with the server,
however it ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from engines.errors import FaceStreamError
from engines.runtime.heap import trim_heap
from gallery.enrol import FaceSample
from stream_worker.config import FaceStreamConfig

log = logging.getLogger(__name__)


class InferenceUnavailableError(FaceStreamError):
    """A model worker process died while serving the request; it has been replaced."""

    retriable = True


PR_SET_PDEATHSIG = 1
_analyzer = None
"""The worker process's FaceAnalyzer (built by :func:`_start`)."""
_release_memory = False
"""Whether the worker gives its buffers back after each request (``runtime.release_memory``)."""


def _die_with(parent: int) -> None:
    """End this worker when the server process ends, however it ends (SIGKILL included):
    the kernel signals it on Linux; elsewhere a thread watches the parent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent ended before the request took effect
                os._exit(0)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start(config: FaceStreamConfig, niceness: int, parent: int) -> None:
    global _analyzer
    _die_with(parent)
    from engines.mtcnn.detector import MTCNNDetector
    from engines.multitask.network import MultiTaskNet
    from engines.runtime.engine import EngineRuntime
    from engines.store.model_store import ModelStore
    from stream_worker.photos import FaceAnalyzer

    if niceness:
        os.nice(niceness)
    settings = config.runtime
    if settings.release_memory is None:  # photos of every size: keep no buffers between calls
        settings = settings.model_copy(update={"release_memory": True})
    global _release_memory
    _release_memory = bool(settings.release_memory)
    runtime = EngineRuntime(settings)  # lives as long as the process
    store = ModelStore.from_config(config.models)
    _analyzer = FaceAnalyzer(MTCNNDetector.create(config.detector, runtime=runtime, store=store),
                             MultiTaskNet.create(runtime=runtime, store=store, recognizer=config.models.recognizer,
                                                 heads=config.models.heads))


def _photo_faces(data: bytes, name: str, max_pixels: int, with_chips: bool) -> list[FaceSample]:
    assert _analyzer is not None, "the worker process was not started"
    try:
        return list(_analyzer.photo_faces(data, name=name, max_pixels=max_pixels, with_chips=with_chips))
    finally:
        if _release_memory:  # the request's own buffers (decoded photo, pyramid) go back too
            trim_heap()


def _pid() -> int:
    return os.getpid()


class ProcessEmbedder:
    """A :class:`gallery.enrol.FaceEmbedder` that runs the models in ``workers`` processes."""

    def __init__(self, config: FaceStreamConfig, *, workers: int, niceness: int) -> None:
        self.config, self.workers, self.niceness = config, workers, niceness
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(self.config, self.niceness, os.getpid()))
        pids = {f.result() for f in [pool.submit(_pid) for _ in range(self.workers)]}  # models load now
        log.info("%d model worker processes ready (pids %s, niceness %d)", len(pids), sorted(pids), self.niceness)
        return pool

    def photo_faces(self, data: bytes, *, name: str, max_pixels: int, with_chips: bool = False) -> list[FaceSample]:
        try:
            return self._pool.submit(_photo_faces, data, name, max_pixels, with_chips).result()
        except BrokenProcessPool:
            log.error("a model worker process died; starting new ones")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            raise InferenceUnavailableError("a model worker process died while serving this request; retry") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
