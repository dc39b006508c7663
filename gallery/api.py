"""REST API over a gallery: the same operations as ``facestream gallery``, with bearer-token
authentication and an upload size limit. Built by :func:`create_app`; served by
``facestream serve-api``. OpenAPI documentation at ``/docs``.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# definition time, and they refer to closure variables (the bearer scheme).
import hmac
import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engines.errors import InvalidImageError
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.errors import EnrolmentRefusedError, GalleryCorruptError, GalleryError, IdentityNotFoundError
from gallery.gallery import Gallery

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20


def create_app(
    gallery: Gallery,
    enroller: PhotoEnroller,
    *,
    token: str,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The API for one gallery. ``token`` must be presented as ``Authorization: Bearer ...``."""
    if len(token) < 16:
        raise ValueError("the API token must be at least 16 characters")
    app = FastAPI(
        title="FaceStream gallery",
        description="Enrol known people from photos, search photos against them, erase them.",
        version="1",
    )
    bearer = HTTPBearer(auto_error=False)
    expected = token.encode()

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(authorised)]

    @app.middleware("http")
    async def limit_upload_size(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes:
            return JSONResponse(
                {"detail": f"request body of {length} bytes exceeds the limit of {max_upload_bytes} bytes"},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            )
        return await call_next(request)

    @app.exception_handler(IdentityNotFoundError)
    async def not_found(_: Request, exc: IdentityNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(InvalidImageError)
    async def bad_image(_: Request, exc: InvalidImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(GalleryCorruptError)
    async def corrupt(_: Request, exc: GalleryCorruptError) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"{upload.filename}: larger than the limit of {max_upload_bytes} bytes")
        return data

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what the gallery serves (no authentication, no personal data)."""
        return {"status": "ok", "model": gallery.model, "threshold": gallery.threshold}

    @app.get("/identities", dependencies=auth)
    def list_identities() -> list[dict[str, Any]]:
        return [i.to_json() for i in gallery.identities()]

    @app.get("/identities/{identity_id}", dependencies=auth)
    def show_identity(identity_id: str) -> dict[str, Any]:
        return gallery.identity(identity_id).to_json()

    @app.post("/identities/{identity_id}/photos", dependencies=auth)
    async def enrol(
        identity_id: str,
        photos: Annotated[list[UploadFile], File(description="one or more photos of this person")],
        name: Annotated[str | None, Form()] = None,
        metadata: Annotated[str | None, Form(description="a JSON object")] = None,
        largest_face: Annotated[bool, Form()] = False,
    ) -> JSONResponse:
        """Enrol photos; 201 if at least one was accepted, 422 (with the reasons) if none was."""
        meta = None
        if metadata is not None:
            try:
                meta = json.loads(metadata)
            except ValueError as exc:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"metadata is not JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "metadata must be a JSON object")
        uploads = [(p.filename or f"photo {i + 1}", await read_upload(p)) for i, p in enumerate(photos)]
        policy = EnrolPolicy(min_quality=enroller.policy.min_quality, largest_face=largest_face)
        per_request = PhotoEnroller(gallery, enroller.embedder, policy)
        outcomes = per_request.enrol(identity_id, uploads, name=name, metadata=meta)
        accepted = any(o.status != "refused" for o in outcomes)
        body: dict[str, Any] = {"photos": [o.to_json() for o in outcomes], "identity": None}
        if accepted:
            body["identity"] = gallery.identity(identity_id).to_json()
        code = status.HTTP_201_CREATED if accepted else status.HTTP_422_UNPROCESSABLE_CONTENT
        return JSONResponse(body, status_code=code)

    @app.delete("/identities/{identity_id}", dependencies=auth)
    def remove(identity_id: str) -> dict[str, Any]:
        """Erase an identity: its record, templates and vectors. The erasure is recorded."""
        event = gallery.remove(identity_id)
        return {"erased": event.identity_id, "templates_removed": event.templates_removed,
                "event_id": event.event_id, "erased_utc": event.erased_utc}

    @app.post("/search", dependencies=auth)
    async def search(
        photo: Annotated[UploadFile, File(description="a photo to search")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        """Every face of the photo with its top-k identities and decisions."""
        data = await read_upload(photo)
        faces = enroller.search(photo.filename or "photo", data, k=k)
        return {"faces": [f.to_json() for f in faces]}

    @app.get("/stats", dependencies=auth)
    def stats() -> dict[str, Any]:
        return gallery.stats()

    @app.get("/erasures", dependencies=auth)
    def erasures(after: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
        """Erasure events after an event id (for downstream systems to apply)."""
        return [e.__dict__ for e in gallery.store.erasures(after)]

    @app.get("/export", dependencies=auth)
    def export() -> StreamingResponse:
        def lines() -> Iterator[str]:
            for line in gallery.export_jsonl():
                yield line + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/import", dependencies=auth)
    async def import_(backup: Annotated[UploadFile, File(description="a FaceStream gallery export")]) -> dict[str, int]:
        data = await read_upload(backup)
        try:
            return gallery.import_jsonl(data.decode().splitlines())
        except (GalleryError, UnicodeDecodeError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

    @app.exception_handler(EnrolmentRefusedError)
    async def refused(_: Request, exc: EnrolmentRefusedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    return app
