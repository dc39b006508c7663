"""Frame sources: video files and live streams (PyAV), webcams (OpenCV), image folders.

A source yields :class:`Frame` objects from :meth:`Source.frames`. Errors are typed:

- :class:`SourceUnavailableError` (retriable): cannot open or lost a live stream. Live
  sources retry by themselves with exponential backoff and report the gap (frames lost,
  seconds) on the first frame after reconnecting; they never raise it.
- :class:`CorruptSourceError` (skippable): a file that is not a decodable video.

Corrupt packets inside a video are skipped and counted (``corrupt_packets``), so a damaged
recording plays to its end instead of stopping at the first bad packet. An MP4 cut short
before its index was written is played from the frames it holds (:mod:`.recovery`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import av
import cv2

from engines.errors import FaceStreamError, InvalidImageError
from engines.image import read_image_file
from stream_worker.local.recovery import MediaData, RecoveredMp4, UnrecoverableVideoError, mdat_without_index
from stream_worker.messages.results import StreamGap
from stream_worker.pipeline.frames import Frame, now_utc

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SourceUnavailableError(FaceStreamError):
    retriable = True


class CorruptSourceError(FaceStreamError):
    skippable = True


class Source(Protocol):
    stream_id: str
    uri: str
    live: bool
    corrupt_packets: int

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Frames until the source ends or ``stop`` is set."""
        ...


def _redact(text: str, uri: str) -> str:
    """``text`` (a URI, or an error message quoting it) without the URI's password."""
    password = urlparse(uri).password
    return text.replace(password, "***") if password else text


class VideoSource:
    """A video file, or a live stream (RTSP/HTTP/...) decoded by PyAV with threaded decoding."""

    def __init__(self, stream_id: str, uri: str, *, live: bool, open_timeout_ms: int = 10_000,
                 reconnect_min_ms: int = 500, reconnect_max_ms: int = 30_000,
                 recovery_reference: Path | None = None) -> None:
        self.stream_id, self.uri, self.live = stream_id, uri, live
        self.recovery_reference = recovery_reference
        self.open_timeout_ms = open_timeout_ms
        self.reconnect_min_ms, self.reconnect_max_ms = reconnect_min_ms, reconnect_max_ms
        self.corrupt_packets = 0
        self.reconnects = 0

    def _open(self) -> av.container.InputContainer:
        options = {"timeout": str(self.open_timeout_ms * 1000)}  # microseconds, for network protocols
        if self.uri.startswith("rtsp"):
            options |= {"rtsp_transport": "tcp"}
        try:
            if self.live:
                return av.open(self.uri, options=options, timeout=self.open_timeout_ms / 1000)
            return av.open(self.uri)
        except FileNotFoundError:
            raise CorruptSourceError(f"{self.stream_id}: no such file {self.uri}") from None
        except av.error.InvalidDataError as exc:
            raise CorruptSourceError(
                _redact(f"{self.stream_id}: {self.uri} is not a decodable video ({exc})", self.uri)
            ) from None
        except (av.error.ExitError, av.error.TimeoutError):
            # PyAV interrupts FFmpeg when the timeout passes; FFmpeg calls that "Immediate exit requested".
            raise SourceUnavailableError(_redact(
                f"{self.stream_id}: {self.uri} sent nothing within {self.open_timeout_ms} ms (timed out; "
                "stream.open_timeout_ms)", self.uri)) from None
        except (av.error.FFmpegError, OSError) as exc:
            # FFmpeg's messages quote the URL, password included.
            raise SourceUnavailableError(_redact(f"{self.stream_id}: cannot open {self.uri}: {exc}", self.uri)) from None

    def _decode(self, container: av.container.InputContainer, stop: threading.Event, first_index: int,
                gap: StreamGap | None) -> Iterator[Frame]:
        streams = container.streams.video
        if not streams:
            raise CorruptSourceError(f"{self.stream_id}: {self.uri} has no video stream")
        stream = streams[0]
        stream.thread_type = "AUTO"
        index = first_index
        for packet in container.demux(stream):
            if stop.is_set():
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.corrupt_packets += 1
                log.warning("%s: skipped a corrupt packet (%s)", self.stream_id, _redact(str(exc), self.uri))
                continue
            for frame in decoded:
                pts_ms = float(frame.time * 1000) if frame.time is not None else None
                yield Frame(self.stream_id, index, pts_ms, frame.to_ndarray(format="bgr24"), now_utc(), gap)
                gap = None
                index += 1

    def _recover(self, media: MediaData, stop: threading.Event) -> Iterator[Frame]:
        """The frames of an MP4 cut before its index (see stream_worker.local.recovery)."""
        log.warning("%s: %s is an MP4 recording cut short before its index was written; playing the frames it holds",
                    self.stream_id, self.uri)
        recovered = RecoveredMp4(Path(self.uri), media, self.recovery_reference)
        index = 0
        try:
            for frame in recovered.frames(stop):
                self.corrupt_packets = recovered.corrupt_packets
                yield Frame(self.stream_id, index, frame.pts_ms, frame.image, now_utc())
                index += 1
        except UnrecoverableVideoError as exc:
            raise CorruptSourceError(f"{self.stream_id}: {exc}") from None
        finally:
            self.corrupt_packets = recovered.corrupt_packets
        log.info("%s: recovered %d frames from %s", self.stream_id, index, self.uri)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        if not self.live:
            media = mdat_without_index(Path(self.uri))
            if media is not None:
                yield from self._recover(media, stop)
                return
            container = self._open()
            try:
                yield from self._decode(container, stop, 0, None)
            except av.error.FFmpegError as exc:
                log.warning("%s: the video ends early (%s)", self.stream_id, exc)
            finally:
                container.close()
            return
        index, gap, wait_ms, lost_since = 0, None, self.reconnect_min_ms, None
        fps = 25.0
        while not stop.is_set():
            try:
                container = self._open()
            except (SourceUnavailableError, CorruptSourceError) as exc:
                lost_since = lost_since or time.monotonic()
                log.warning("%s: %s; retrying in %.1f s", self.stream_id, exc, wait_ms / 1000)
                stop.wait(wait_ms / 1000)
                wait_ms = min(wait_ms * 2, self.reconnect_max_ms)
                self.reconnects += 1
                continue
            if lost_since is not None:
                seconds = time.monotonic() - lost_since
                gap = StreamGap(frames_lost=int(round(seconds * fps)), seconds=seconds)
                index += gap.frames_lost
                log.warning("%s: reconnected after %.1f s (about %d frames lost)", self.stream_id, seconds, gap.frames_lost)
            wait_ms, lost_since = self.reconnect_min_ms, None
            try:
                rate = container.streams.video[0].average_rate if container.streams.video else None
                fps = float(rate) if rate else fps
                for frame in self._decode(container, stop, index, gap):
                    index, gap = frame.index + 1, None
                    yield frame
            except (av.error.ExitError, av.error.TimeoutError):
                log.warning("%s: no data for %d ms: the stream stalled (timed out; stream.open_timeout_ms)",
                            self.stream_id, self.open_timeout_ms)
            except (av.error.FFmpegError, OSError) as exc:
                log.warning("%s: stream interrupted (%s)", self.stream_id, _redact(str(exc), self.uri))
            finally:
                container.close()
            if not stop.is_set():
                lost_since = time.monotonic()
                log.warning("%s: stream ended; reconnecting", self.stream_id)


class WebcamSource:
    """A local camera through OpenCV (``webcam:0``)."""

    live = True

    def __init__(self, stream_id: str, uri: str, device: int, *, reconnect_max_ms: int = 30_000) -> None:
        self.stream_id, self.uri, self.device = stream_id, uri, device
        self.reconnect_max_ms = reconnect_max_ms
        self.corrupt_packets = 0

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        index, wait_ms = 0, 500
        while not stop.is_set():
            capture = cv2.VideoCapture(self.device)
            if not capture.isOpened():
                log.warning("%s: cannot open camera %d; retrying in %.1f s", self.stream_id, self.device, wait_ms / 1000)
                stop.wait(wait_ms / 1000)
                wait_ms = min(wait_ms * 2, self.reconnect_max_ms)
                continue
            started = time.monotonic()
            try:
                while not stop.is_set():
                    ok, image = capture.read()
                    if not ok:
                        break
                    yield Frame(self.stream_id, index, (time.monotonic() - started) * 1000, image, now_utc())
                    index += 1
            finally:
                capture.release()


class FolderSource:
    """The images of a folder, in name order, as frames (unreadable files are skipped)."""

    live = False

    def __init__(self, stream_id: str, folder: Path) -> None:
        self.stream_id, self.uri, self.folder = stream_id, str(folder), folder
        self.corrupt_packets = 0

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        index = 0
        for path in paths:
            if stop.is_set():
                return
            try:
                image = read_image_file(path)
            except InvalidImageError as exc:
                self.corrupt_packets += 1
                log.warning("%s: skipped %s", self.stream_id, exc)
                continue
            yield Frame(self.stream_id, index, None, image, now_utc())
            index += 1


SourceFactory = Callable[[str, str], Source]


def open_source(stream_id: str, uri: str, *, open_timeout_ms: int = 10_000, reconnect_min_ms: int = 500,
                reconnect_max_ms: int = 30_000, recovery_reference: Path | None = None) -> Source:
    """The source for a URI: ``rtsp://...`` (and other live schemes), ``webcam:N``, a folder of
    images, or a video file path (``recovery_reference``: see stream.recovery_reference)."""
    scheme = urlparse(uri).scheme.lower()
    if scheme == "webcam":
        try:
            return WebcamSource(stream_id, uri, int(uri.split(":", 1)[1]), reconnect_max_ms=reconnect_max_ms)
        except ValueError:
            raise CorruptSourceError(f"{stream_id}: webcam sources are written webcam:N, got {uri}") from None
    if scheme in LIVE_SCHEMES:
        return VideoSource(stream_id, uri, live=True, open_timeout_ms=open_timeout_ms,
                           reconnect_min_ms=reconnect_min_ms, reconnect_max_ms=reconnect_max_ms)
    path = Path(uri[7:] if scheme == "file" else uri)
    if path.is_dir():
        return FolderSource(stream_id, path)
    return VideoSource(stream_id, str(path), live=False, recovery_reference=recovery_reference)
