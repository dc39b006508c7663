"""``facestream gallery ...``: manage a gallery of known people from the command line.

Every command prints JSON (objects, or JSON lines for lists and exports).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engines.errors import ConfigError, FaceStreamError
from gallery.calibration import DEFAULT_TARGET_FMR, calibrate
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from stream_worker.cli.options import (
    add_config_options,
    add_options,
    add_pipeline_options,
    engine_runtime,
    face_analyzer,
    given,
    positive_int,
    quality,
)
from stream_worker.config import FaceStreamConfig, env_name
from stream_worker.photos import FaceAnalyzer

log = logging.getLogger(__name__)

AnalyzerFactory = Callable[[], FaceAnalyzer]


def add_parsers(commands: Any) -> None:
    """Register ``gallery`` and its actions on the main parser's subcommands."""
    parser = commands.add_parser("gallery", help="manage a gallery of known people (enrol, search, remove, ...)")
    add_options(parser, "gallery-db", "publish")
    add_config_options(parser)
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(dest="gallery_command", required=True, metavar="ACTION")

    enrol = actions.add_parser("enrol", help="enrol photos of one person")
    enrol.add_argument("--id", required=True, dest="identity", help="identity id (your key, e.g. a case number)")
    enrol.add_argument("--name", help="display name")
    enrol.add_argument("--meta", type=json.loads, help="metadata as a JSON object")
    enrol.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    enrol.add_argument("--largest-face", action="store_true", help="enrol the largest face of photos with several")
    enrol.add_argument("--min-quality", type=quality, default=EnrolPolicy().min_quality,
                       help="refuse faces below this quality (default %(default)s)")
    add_pipeline_options(enrol)

    actions.add_parser("list", help="all identities, one JSON object per line")
    show = actions.add_parser("show", help="one identity")
    show.add_argument("identity", metavar="ID")
    remove = actions.add_parser("remove", help="erase an identity, its templates and vectors")
    remove.add_argument("identity", metavar="ID")

    search = actions.add_parser("search", help="who is in this photo?")
    search.add_argument("image", type=Path, metavar="IMAGE")
    search.add_argument("-k", type=positive_int, default=5, help="identities per face (default %(default)s)")
    add_pipeline_options(search)

    actions.add_parser("stats", help="counts, index, threshold, identities needing re-enrolment")
    publish = actions.add_parser("publish", help="publish identities to the Kafka changelog (needs --publish)")
    publish.add_argument("identities", nargs="*", metavar="ID", help="which (default: all)")
    export = actions.add_parser("export", help="templates as JSON lines (backup, migration)")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    imp = actions.add_parser("import", help="load an export")
    imp.add_argument("file", type=Path, metavar="FILE")

    cal = actions.add_parser("calibrate", help="set the decision threshold for a false-match rate from labelled pairs")
    cal.add_argument("--pairs", type=Path, required=True,
                     help="CSV with columns path_a, path_b, same (1/0); paths relative to the CSV's folder")
    cal.add_argument("--target-fmr", type=float, default=DEFAULT_TARGET_FMR, help="default %(default)s")
    add_pipeline_options(cal)


def _print(record: Any) -> None:
    print(json.dumps(record))


def run(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    if config.gallery.path is None:
        raise ConfigError(f"name the gallery database with --db PATH (or {env_name(('gallery', 'path'))})")
    with contextlib.ExitStack() as stack:

        def analyzer() -> FaceAnalyzer:
            runtime = stack.enter_context(engine_runtime(config))
            return face_analyzer(config, runtime, multitask=True)

        publisher = None
        if given(args, "--publish"):
            from stream_worker.kafka.changelog import GalleryPublisher
            from stream_worker.kafka.client import make_producer

            if not config.kafka.gallery_topic:
                raise ConfigError("--publish needs a changelog topic (kafka.gallery_topic is empty)")
            publisher = GalleryPublisher(make_producer(config.kafka), config.kafka.gallery_topic)
            stack.callback(publisher.producer.close)
        return _run_gallery(args, config, analyzer, publisher)


def _run_gallery(args: argparse.Namespace, config: FaceStreamConfig, analyzer: AnalyzerFactory,
                 publisher: Any) -> int:
    command = args.gallery_command
    with Gallery(config.gallery.path, create=command in ("enrol", "import", "calibrate"),
                 threshold=config.gallery.threshold, index=config.gallery.index) as gallery:
        if command == "enrol":
            status = _enrol(args, gallery, analyzer())
            if publisher is not None and any(i.id == args.identity for i in gallery.identities()):
                publisher.publish_identity(gallery, args.identity)
            return status
        if command == "publish":
            if publisher is None:
                raise ConfigError("name the brokers with --publish HOST:PORT")
            for identity_id in args.identities or [i.id for i in gallery.identities()]:
                publisher.publish_identity(gallery, identity_id)
                _print({"published": identity_id, "topic": config.kafka.gallery_topic})
        if command == "list":
            for identity in gallery.identities():
                _print(identity.to_json())
        elif command == "show":
            _print(gallery.identity(args.identity).to_json())
        elif command == "remove":
            event = gallery.remove(args.identity)
            if publisher is not None:
                publisher.publish_erasure(args.identity)
            _print({"erased": event.identity_id, "templates_removed": event.templates_removed,
                    "event_id": event.event_id, "erased_utc": event.erased_utc})
        elif command == "search":
            enroller = PhotoEnroller(gallery, analyzer())
            faces = enroller.search(str(args.image), args.image.read_bytes(), k=args.k)
            _print({"image": str(args.image), "faces": [f.to_json() for f in faces]})
        elif command == "stats":
            _print(gallery.stats())
        elif command == "export":
            out = args.out.open("w") if args.out else sys.stdout
            try:
                for line in gallery.export_jsonl():
                    out.write(line + "\n")
            finally:
                if args.out:
                    out.close()
        elif command == "import":
            with args.file.open() as f:
                _print(gallery.import_jsonl(f))
        elif command == "calibrate":
            return _calibrate(args, gallery, analyzer())
    return 0


def _enrol(args: argparse.Namespace, gallery: Gallery, embedder: FaceAnalyzer) -> int:
    if args.meta is not None and not isinstance(args.meta, dict):
        raise ConfigError("--meta must be a JSON object")
    enroller = PhotoEnroller(gallery, embedder, EnrolPolicy(min_quality=args.min_quality, largest_face=args.largest_face))
    outcomes = []
    for path in tqdm(args.images, desc=f"enrolling {args.identity}", unit="photo", disable=None, file=sys.stderr):
        try:
            data = path.read_bytes()
        except OSError as exc:
            outcomes.append({"source": str(path), "status": "refused", "reason": f"cannot read: {exc.strerror}"})
            continue
        outcomes += [o.to_json() for o in enroller.enrol(args.identity, [(str(path), data)], name=args.name,
                                                          metadata=args.meta)]
    refused = [o for o in outcomes if o["status"] == "refused"]
    for o in refused:
        log.error("%s", o["reason"])
    record: dict[str, Any] = {"identity": None, "photos": outcomes}
    if any(o["status"] != "refused" for o in outcomes):
        record["identity"] = gallery.identity(args.identity).to_json()
    _print(record)
    return 1 if refused else 0


def _calibrate(args: argparse.Namespace, gallery: Gallery, analyzer: FaceAnalyzer) -> int:
    with args.pairs.open() as f:
        rows = list(csv.DictReader(f))
    missing = {"path_a", "path_b", "same"} - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"{args.pairs}: missing column(s) {', '.join(sorted(missing))}")
    root = args.pairs.parent
    photos = sorted({r[k] for r in rows for k in ("path_a", "path_b")})
    embeddings: dict[str, np.ndarray] = {}
    for photo in tqdm(photos, desc="embedding photos", unit="photo", disable=None, file=sys.stderr):
        try:
            _, attributes = analyzer.largest_face(root / photo)
        except FaceStreamError as exc:
            if not exc.skippable:
                raise
            log.warning("skipping pairs with %s: %s", photo, exc)
            continue
        embeddings[photo] = attributes.embeddings[0]
    usable = [r for r in rows if r["path_a"] in embeddings and r["path_b"] in embeddings]
    scores = np.array([embeddings[r["path_a"]] @ embeddings[r["path_b"]] for r in usable])
    same = np.array([r["same"].strip() in ("1", "true", "True") for r in usable])
    result = calibrate(scores, same, args.target_fmr)
    record = {**result.to_json(), "model": gallery.model, "pairs_file": str(args.pairs), "pairs_used": len(usable),
              "pairs_skipped": len(rows) - len(usable)}
    gallery.store.set_threshold(gallery.model, result.threshold, record)
    _print(record)
    return 0
