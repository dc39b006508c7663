"""REST API over a gallery: the same operations as ``facestream gallery``, built by
:func:`create_app` and served by ``facestream serve-api``. OpenAPI documentation at
``/docs``, served from the package (no CDN: it works offline).

What a request goes through, in order:

1. :class:`RequestGuard` (plain ASGI, before FastAPI reads anything): the bearer token is
   checked before a single byte of the body is read (401), a declared ``Content-Length``
   over the limit is refused at once (413), and a body without one is counted as it
   streams and cut off at the limit (413): nothing larger is ever buffered or spooled.
2. Requests that run the models (search, enrol) reserve a place in a bounded
   :class:`InferencePool` in the guard too, before their upload is read: when its workers
   and queue are full the request gets 429 at once (with ``Retry-After``). The models run
   off the event loop (``facestream serve-api``: in worker processes, see
   :mod:`stream_worker.photo_workers`), so ``/health`` and every other endpoint keep
   answering while searches run.
3. Uploaded images are refused from their header above ``max_image_pixels`` (422) before
   any pixel is decoded; ids, names and metadata are checked (422); an import is checked
   whole before anything is written.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# definition time.
import asyncio
import contextlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.errors import FaceStreamError, InvalidImageError
from engines.runtime.engine import available_cpus
from gallery import validation as valid
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.errors import EnrolmentRefusedError, GalleryCorruptError, GalleryError, IdentityNotFoundError
from gallery.gallery import Gallery
from gallery.sightings import SightingsError, SightingsStore, parse_utc, search_result

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
PUBLIC_PATHS = frozenset({"/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
PUBLIC_PREFIXES = ("/static-offline-docs/",)
"""Paths that need no token: liveness and the documentation (no personal data)."""
SIGHTINGS_PREFIX = "/sightings/"
"""Paths that take the sightings token (search over everything the cameras saw), and only it."""


def _json(code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code, headers=headers)


class RequestGuard:
    """Authenticate before reading the body; enforce the body limit while it streams."""

    def __init__(self, app: ASGIApp, *, token: str, max_body_bytes: int, pool: "InferencePool",
                 sightings_token: str | None = None) -> None:
        self.app = app
        self.expected = token.encode()
        self.sightings_expected = sightings_token.encode() if sightings_token else None
        self.max_body_bytes = max_body_bytes
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            # two scopes: the sightings token opens /sightings/ only, the gallery token everything else
            expected = self.sightings_expected if path.startswith(SIGHTINGS_PREFIX) else self.expected
            if scheme.lower() != "bearer" or expected is None or not hmac.compare_digest(
                    presented.strip().encode(), expected):
                await _json(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _json(status.HTTP_413_CONTENT_TOO_LARGE,
                        f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes")(
                scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI passes an HTTPException raised while it reads the body through as is
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                        f"request body exceeds the limit of {self.max_body_bytes} bytes")
            return message

        if scope["method"] == "POST" and _runs_models(path):
            if not self.pool.reserve():  # refused before its body is read: a full pool costs nothing more
                await _json(status.HTTP_429_TOO_MANY_REQUESTS, f"busy: {self.pool.capacity} requests are running or "
                            "waiting for the models; retry shortly", {"Retry-After": "1"})(scope, receive, send)
                return
            try:
                await self.app(scope, counted, send)
            finally:
                self.pool.release()
            return
        await self.app(scope, counted, send)


def _utc(text: str | None, name: str) -> "datetime | None":
    if text is None:
        return None
    try:
        return parse_utc(text)
    except SightingsError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: {exc}") from None


def _runs_models(path: str) -> bool:
    return path in ("/search", "/sightings/search") or (path.startswith("/identities/") and path.endswith("/photos"))


class InferencePool:
    """Model work off the event loop: ``workers`` at a time and ``queue_limit`` waiting.
    A request that runs the models reserves its place in :class:`RequestGuard`, before its
    upload is read; beyond the capacity it gets 429 at once instead of an ever longer queue."""

    def __init__(self, workers: int, queue_limit: int) -> None:
        self.workers = workers or available_cpus()
        self.capacity = self.workers + queue_limit
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="api-inference")
        self._lock = threading.Lock()
        self.admitted = 0
        self.refused = 0

    def reserve(self) -> bool:
        with self._lock:
            if self.admitted >= self.capacity:
                self.refused += 1
                return False
            self.admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.admitted -= 1

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run on the pool (the caller holds a reservation)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    gallery: Gallery,
    enroller: PhotoEnroller,
    *,
    token: str,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_image_pixels: int = 40_000_000,
    inference_workers: int = 0,
    queue_limit: int = 32,
    sightings: "SightingsStore | None" = None,
    sightings_token: str | None = None,
) -> FastAPIOffline:
    """The API for one gallery. ``token`` must be presented as ``Authorization: Bearer ...``.
    With ``sightings``, ``POST /sightings/search`` searches the store by photo; it takes
    ``sightings_token`` and no other (a scope of its own: who may search everything the
    cameras saw need not manage the gallery, and the reverse)."""
    if len(token) < 16:
        raise ValueError("the API token must be at least 16 characters")
    if sightings is not None and (sightings_token is None or len(sightings_token) < 16 or sightings_token == token):
        raise ValueError("the sightings API needs its own token of at least 16 characters (not the gallery's)")
    pool = InferencePool(inference_workers, queue_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPIOffline(
        title="FaceStream gallery",
        description="Enrol known people from photos, search photos against them, erase them.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(RequestGuard, token=token, max_body_bytes=max_upload_bytes, pool=pool,
                       sightings_token=sightings_token if sightings is not None else None)
    app.state.inference = pool

    for error, code in ((IdentityNotFoundError, status.HTTP_404_NOT_FOUND),
                        (InvalidImageError, status.HTTP_422_UNPROCESSABLE_CONTENT),
                        (EnrolmentRefusedError, status.HTTP_422_UNPROCESSABLE_CONTENT),
                        (valid.InvalidInputError, status.HTTP_422_UNPROCESSABLE_CONTENT)):
        app.add_exception_handler(error, lambda _, exc, code=code: _json(code, str(exc)))

    @app.exception_handler(GalleryCorruptError)
    async def corrupt(_: Request, exc: GalleryCorruptError) -> JSONResponse:
        log.error("%s", exc)
        return _json(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))

    @app.exception_handler(FaceStreamError)
    async def unavailable(_: Request, exc: FaceStreamError) -> JSONResponse:
        """A retriable fault (a model worker died): 503, try again; anything else: 500."""
        log.error("%s", exc)
        code = status.HTTP_503_SERVICE_UNAVAILABLE if exc.retriable else status.HTTP_500_INTERNAL_SERVER_ERROR
        return _json(code, str(exc), {"Retry-After": "1"} if exc.retriable else None)

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"{upload.filename}: larger than the limit of {max_upload_bytes} bytes")
        return data

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what the gallery serves (no authentication, no personal data). Answers
        at once, whatever the models are doing."""
        return {"status": "ok", "model": gallery.model, "threshold": gallery.threshold,
                "inference": {"workers": pool.workers, "admitted": pool.admitted, "capacity": pool.capacity,
                              "refused": pool.refused}}

    @app.get("/identities")
    def list_identities() -> list[dict[str, Any]]:
        return [i.to_json() for i in gallery.identities()]

    @app.get("/identities/{identity_id}")
    def show_identity(identity_id: str) -> dict[str, Any]:
        return gallery.identity(identity_id).to_json()

    @app.post("/identities/{identity_id}/photos")
    async def enrol(
        identity_id: str,
        photos: Annotated[list[UploadFile], File(description="one or more photos of this person")],
        name: Annotated[str | None, Form()] = None,
        metadata: Annotated[str | None, Form(description="a JSON object")] = None,
        largest_face: Annotated[bool, Form()] = False,
    ) -> JSONResponse:
        """Enrol photos; 201 if at least one was accepted, 422 (with the reasons) if none was."""
        checked_id = valid.identity_id(identity_id)
        checked_name = None if name is None else valid.display_name(name)
        meta = None if metadata is None else valid.parse_metadata(metadata)
        uploads = [(p.filename or f"photo {i + 1}", await read_upload(p)) for i, p in enumerate(photos)]
        policy = EnrolPolicy(min_quality=enroller.policy.min_quality, largest_face=largest_face)
        per_request = PhotoEnroller(gallery, enroller.embedder, policy, max_pixels=max_image_pixels)
        outcomes = await pool.run(per_request.enrol, checked_id, uploads, name=checked_name, metadata=meta)
        accepted = any(o.status != "refused" for o in outcomes)
        body: dict[str, Any] = {"photos": [o.to_json() for o in outcomes], "identity": None}
        if accepted:
            body["identity"] = gallery.identity(checked_id).to_json()
        code = status.HTTP_201_CREATED if accepted else status.HTTP_422_UNPROCESSABLE_CONTENT
        return JSONResponse(body, status_code=code)

    @app.delete("/identities/{identity_id}")
    def remove(identity_id: str) -> dict[str, Any]:
        """Erase an identity: its record, templates and vectors. The erasure is recorded."""
        event = gallery.remove(identity_id)
        return {"erased": event.identity_id, "templates_removed": event.templates_removed,
                "event_id": event.event_id, "erased_utc": event.erased_utc}

    @app.post("/search")
    async def search(
        photo: Annotated[UploadFile, File(description="a photo to search")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        """Every face of the photo with its top-k identities and decisions."""
        data = await read_upload(photo)
        searcher = PhotoEnroller(gallery, enroller.embedder, enroller.policy, max_pixels=max_image_pixels)
        faces = await pool.run(searcher.search, photo.filename or "photo", data, k=k)
        return {"faces": [f.to_json() for f in faces]}

    if sightings is not None:
        store = sightings

        @app.post("/sightings/search")
        async def search_sightings(
            photo: Annotated[UploadFile, File(description="a photo of the person to look for")],
            since: Annotated[str | None, Query(description="ISO 8601 with a zone")] = None,
            until: Annotated[str | None, Query(description="ISO 8601 with a zone")] = None,
            camera: Annotated[list[str] | None, Query(description="stream ids (repeatable)")] = None,
            k: Annotated[int, Query(ge=1, le=1000)] = 50,
            thumbnails: bool = False,
            operator: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[\w.@:-]+$",
                                           description="who searches, for the audit log")] = "api",
        ) -> dict[str, Any]:
            """The sightings of the largest face of the photo, best first, with visits per camera.
            Audited (operator, time, the photo's SHA-256, matches)."""
            window = [_utc(v, name) for v, name in ((since, "since"), (until, "until"))]
            data = await read_upload(photo)
            faces = await pool.run(enroller.embedder.photo_faces, data, name=photo.filename or "photo",
                                   max_pixels=max_image_pixels)
            if not faces:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no face found in the photo")
            largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            threshold = gallery.threshold
            hits = await asyncio.to_thread(store.search, largest.embedding, gallery.model, threshold=threshold, k=k,
                                           since=window[0], until=window[1], cameras=camera)
            store.audit(f"api:{operator}", "search", sum(h.decision == "match" for h in hits), data,
                        detail=f"since={since} until={until} cameras={camera} k={k}")
            return search_result(store, hits, space_id=gallery.model, threshold=threshold, thumbnails=thumbnails)

        @app.post("/sightings/{sighting_id}/reject")
        def reject_sighting(
            sighting_id: str,
            identity: Annotated[str, Query(min_length=1, max_length=256, description="the identity it is not")],
            operator: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[\w.@:-]+$")] = "api",
        ) -> dict[str, Any]:
            """"Not this person": the sighting loses the name and gets a pseudonym, and the
            identity is never again decided for faces that link to it. Audited."""
            if store.get(sighting_id) is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sighting {sighting_id}")
            try:
                rejected = store.reject(sighting_id, identity, f"api:{operator}")
            except SightingsError as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            return {"sighting_id": rejected.sighting_id, "pseudonym": rejected.pseudonym, "rejected_identity": identity}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return gallery.stats()

    @app.get("/erasures")
    def erasures(after: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
        """Erasure events after an event id (for downstream systems to apply)."""
        return [e.__dict__ for e in gallery.store.erasures(after)]

    @app.get("/export")
    def export() -> StreamingResponse:
        def lines() -> Iterator[str]:
            for line in gallery.export_jsonl():
                yield line + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/import")
    async def import_(backup: Annotated[UploadFile, File(description="a FaceStream gallery export")]) -> dict[str, int]:
        """Load an export: checked whole first, then applied in one transaction (all or nothing)."""
        data = await read_upload(backup)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the export is not UTF-8 text") from None
        try:
            return await asyncio.to_thread(gallery.import_jsonl, text.splitlines())
        except GalleryError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

    return app
