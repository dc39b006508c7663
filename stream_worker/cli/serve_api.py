"""``facestream serve-api``: the gallery's REST API."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from stream_worker.cli.options import (
    API_TOKEN_ENV,
    GALLERY_ENV,
    add_pipeline_options,
    engine_runtime,
    face_analyzer,
)

log = logging.getLogger("facestream")


def add_parsers(commands: Any) -> None:
    serve = commands.add_parser(
        "serve-api", help="serve the gallery's REST API (OpenAPI docs at /docs)",
        description=f"Serve a gallery over HTTP. Requests need 'Authorization: Bearer TOKEN' with the token "
        f"from {API_TOKEN_ENV} (at least 16 characters; it is never logged).",
    )
    serve.add_argument("--db", type=Path, default=os.environ.get(GALLERY_ENV),
                       help=f"gallery database file (env {GALLERY_ENV})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default %(default)s)")
    serve.add_argument("--min-quality", type=float, default=0.5, help="refuse enrolment below this face quality")
    add_pipeline_options(serve)
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from engines.runtime.device import Device
    from gallery.api import create_app
    from gallery.enrol import EnrolPolicy, PhotoEnroller
    from gallery.gallery import Gallery
    from gallery.index import IndexConfig

    token = os.environ.get(API_TOKEN_ENV, "")
    if len(token) < 16:
        raise ConfigError(f"set {API_TOKEN_ENV} to a secret of at least 16 characters before serving the API")
    if args.db is None:
        raise ConfigError(f"name the gallery database with --db PATH (or {GALLERY_ENV})")
    with engine_runtime(args) as runtime, Gallery(
        args.db, index=IndexConfig(use_gpu=runtime.plan.device is Device.CUDA)  # the engine's one device decision
    ) as gallery:
        enroller = PhotoEnroller(gallery, face_analyzer(args, runtime, multitask=True),
                                 EnrolPolicy(min_quality=args.min_quality))
        app = create_app(gallery, enroller, token=token, max_upload_bytes=int(args.max_upload_mb * 2**20))
        log.warning("serving gallery %s on http://%s:%d (docs at /docs)", args.db, args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
