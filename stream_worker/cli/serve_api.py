"""``facestream serve-api``: the gallery's REST API."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from stream_worker.cli.options import (
    add_config_options,
    add_options,
    add_pipeline_options,
    embedding_space,
)
from stream_worker.config import FaceStreamConfig, env_name

log = logging.getLogger("facestream")


def add_parsers(commands: Any) -> None:
    serve = commands.add_parser(
        "serve-api", help="serve the gallery's REST API (OpenAPI docs at /docs)",
        description=f"Serve a gallery over HTTP. Requests need 'Authorization: Bearer TOKEN' with the token "
        f"from {env_name(('api', 'token'))} (at least 16 characters; it is never logged).",
    )
    add_options(serve, "gallery-db", "api")
    serve.add_argument("--sightings", type=Path, metavar="DIR",
                       help="also serve POST /sightings/search over this sightings store; its requests need the "
                       f"token from {env_name(('api', 'sightings_token'))} (and no other)")
    add_pipeline_options(serve)
    add_config_options(serve)
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    import uvicorn

    from engines.runtime.device import Device, select_device
    from engines.runtime.engine import available_cpus
    from gallery.api import create_app
    from gallery.enrol import EnrolPolicy, PhotoEnroller
    from gallery.gallery import Gallery
    from stream_worker.photo_workers import ProcessEmbedder

    api = config.api
    token = api.token.get_secret_value()
    if len(token) < 16:
        raise ConfigError(f"set {env_name(('api', 'token'))} to a secret of at least 16 characters before serving "
                          "the API")
    if config.gallery.path is None:
        raise ConfigError(f"name the gallery database with --db PATH (or {env_name(('gallery', 'path'))})")
    sightings = None
    if args.sightings is not None:
        search_token = api.sightings_token.get_secret_value()
        if len(search_token) < 16 or search_token == token:
            raise ConfigError(f"set {env_name(('api', 'sightings_token'))} to a secret of at least 16 characters, "
                              f"other than {env_name(('api', 'token'))}, before serving the sightings")
        from gallery.sightings import SightingsStore

        sightings = SightingsStore(args.sightings, create=False)
    plan = select_device(config.runtime.device, force_cpu=config.runtime.force_cpu)  # the engine's one decision
    workers = api.inference_workers or (1 if plan.device is Device.CUDA else available_cpus())
    # The models run in worker processes: the event loop (/health, 429s) shares no GIL with them.
    embedder = ProcessEmbedder(config, workers=workers, niceness=api.inference_niceness)
    try:
        index = config.gallery.index.model_copy(update={"use_gpu": plan.device is Device.CUDA})
        with Gallery(config.gallery.path, index=index, threshold=config.gallery.threshold,
                     **embedding_space(config)) as gallery:
            enroller = PhotoEnroller(gallery, embedder, EnrolPolicy(min_quality=api.min_quality))
            app = create_app(gallery, enroller, token=token, max_upload_bytes=int(api.max_upload_mb * 2**20),
                             max_image_pixels=api.max_image_pixels, inference_workers=workers,
                             queue_limit=api.queue_limit, sightings=sightings,
                             sightings_token=api.sightings_token.get_secret_value() if sightings else None)
            log.warning("serving gallery %s on http://%s:%d (docs at /docs)", config.gallery.path, api.host, api.port)
            uvicorn.run(app, host=api.host, port=api.port, log_level="warning")
    finally:
        embedder.close()
        if sightings is not None:
            sightings.close()
    return 0
