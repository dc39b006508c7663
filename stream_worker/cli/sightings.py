"""``facestream sightings``: search everything the cameras saw by photo; retention; the audit log."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.errors import ConfigError
from stream_worker.cli.files import readable_file
from stream_worker.cli.options import (
    add_config_options,
    add_options,
    bounded,
    embedding_space,
    engine_runtime,
    face_analyzer,
)
from stream_worker.config import FaceStreamConfig

if TYPE_CHECKING:
    from gallery.sightings import SightingsStore

MAX_PHOTO_BYTES = 50 << 20


def parse_utc(text: str, flag: str) -> datetime:
    """:func:`gallery.sightings.parse_utc`, its error naming the flag."""
    from gallery.sightings import SightingsError
    from gallery.sightings import parse_utc as parse

    try:
        return parse(text)
    except SightingsError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def add_parsers(commands: Any) -> None:
    sightings = commands.add_parser(
        "sightings", help="search what the cameras saw by photo; retention and audit",
        description="The sightings store (`facestream run --sightings DIR`): every ended track, searchable by face.")
    actions = sightings.add_subparsers(dest="sightings_command", required=True, metavar="ACTION")
    search = actions.add_parser(
        "search", help="every sighting of the person in a photo, best first, grouped into visits",
        description="Searches the sightings with the largest face of PHOTO. Prints JSON: the visits (consecutive "
        "sightings on one camera) that match at the recognizer's calibrated threshold, then every hit with its "
        "score and decision. Each search is written to the store's audit log (operator, time, the photo's "
        "SHA-256, number of results).")
    search.add_argument("photo", type=Path, metavar="PHOTO")
    search.add_argument("--store", type=Path, required=True, metavar="DIR", help="the sightings store folder")
    search.add_argument("--since", help="only sightings that end at or after this time (ISO 8601, with a zone)")
    search.add_argument("--until", help="only sightings that start at or before this time")
    search.add_argument("--camera", action="append", metavar="ID", help="only this stream id (repeatable)")
    search.add_argument("-k", type=bounded(int, 1, 10_000, "-k"), default=50,
                        help="at most this many sightings (default 50)")
    search.add_argument("--threshold", type=bounded(float, -1.0, 1.0, "--threshold"),
                        help="decision threshold (default: the recognizer's, FMR 1e-3 per comparison)")
    search.add_argument("--thumbnails", action="store_true", help="include each hit's thumbnail (base64 JPEG)")
    search.add_argument("--operator", default=None, help="who searches, for the audit log (default: the OS user)")
    add_options(search, "runtime", "models")
    add_config_options(search)
    search.set_defaults(handler=run_search)

    clean = actions.add_parser(
        "clean", help="delete whole days older than the retention period",
        description="Deletes every day partition that ends more than --keep-days days ago (whole files; counted).")
    clean.add_argument("--store", type=Path, required=True, metavar="DIR")
    clean.add_argument("--keep-days", type=bounded(int, 1, 100_000, "--keep-days"), metavar="N",
                       help="default: sightings.retention_days")
    add_config_options(clean)
    clean.set_defaults(handler=run_clean)

    name = actions.add_parser(
        "name", help="name a stranger's pseudonym: enrol the identity from its best shots, relabel its sightings",
        description="Enrols ID in the gallery from the best embeddings of the pseudonym's sightings (up to 5, best "
        "quality first) and relabels every sighting of the pseudonym as ID.")
    name.add_argument("pseudonym", metavar="PSEUDONYM", help="e.g. unknown-3")
    name.add_argument("--store", type=Path, required=True, metavar="DIR")
    name.add_argument("--id", required=True, dest="identity_id", help="the identity to enrol (new or existing)")
    name.add_argument("--name", help="display name (default: ID)")
    name.add_argument("--operator", default=None, help="who names, for the audit log (default: the OS user)")
    add_options(name, "gallery")
    add_config_options(name)
    name.set_defaults(handler=run_name)

    reject = actions.add_parser(
        "reject", help="'not this person': a sighting was wrongly named",
        description="The sighting loses the identity and gets a pseudonym; that identity is never again decided "
        "for faces that link to the pseudonym.")
    reject.add_argument("sighting", metavar="SIGHTING", help="a sighting id (from search)")
    reject.add_argument("--store", type=Path, required=True, metavar="DIR")
    reject.add_argument("--identity", required=True, help="the identity it is not")
    reject.add_argument("--operator", default=None)
    add_config_options(reject)
    reject.set_defaults(handler=run_reject)

    serve = actions.add_parser(
        "serve", help="the sightings service: the Kafka embeddings topic into a sightings store",
        description="Consumes the embeddings topic (kafka.embeddings_topic) in its own consumer group "
        "(kafka.sightings_group_id) and stores each ended track as a sighting; offsets are committed only after "
        "the sightings are stored, and a replayed track never makes a second sighting. Stops on SIGTERM/SIGINT.")
    serve.add_argument("--store", type=Path, required=True, metavar="DIR", help="the sightings store (made if missing)")
    serve.add_argument("--watch-list-only", action="store_true", help="store only tracks named as an enrolled person")
    serve.add_argument("--idle-exit-ms", type=bounded(int, 0, 2**31, "--idle-exit-ms"), default=0,
                       help="exit after this long without a record (0: never)")
    add_options(serve, "bootstrap", "metrics")
    add_config_options(serve)
    serve.set_defaults(handler=run_serve)

    audit = actions.add_parser("audit", help="print the audit log (JSON lines)")
    audit.add_argument("--store", type=Path, required=True, metavar="DIR")
    add_config_options(audit)
    audit.set_defaults(handler=run_audit)


def _open(path: Path, config: FaceStreamConfig | None = None) -> SightingsStore:
    from gallery.sightings import SightingsStore

    return SightingsStore(path, create=False, visit_gap_s=config.sightings.visit_gap_s if config else 60.0)


def run_search(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from engines.multitask.recognizers import profile
    from gallery.defaults import DEFAULT_CALIBRATIONS
    from gallery.sightings import search_result

    since = parse_utc(args.since, "--since") if args.since else None
    until = parse_utc(args.until, "--until") if args.until else None
    if since and until and until < since:
        raise ConfigError("--until is before --since")
    readable_file(args.photo, "PHOTO", max_bytes=MAX_PHOTO_BYTES)
    space = profile(config.models.recognizer).model_id
    threshold = args.threshold if args.threshold is not None else DEFAULT_CALIBRATIONS[space].threshold
    photo = args.photo.read_bytes()
    with _open(args.store, config) as store:
        with engine_runtime(config) as runtime:
            _, attributes = face_analyzer(config, runtime, multitask=True).largest_face(args.photo)
        hits = store.search(attributes.embeddings[0], space, threshold=threshold, k=args.k, since=since, until=until,
                            cameras=args.camera)
        store.audit(args.operator or getpass.getuser(), "search", sum(h.decision == "match" for h in hits), photo,
                    detail=json.dumps({"since": args.since, "until": args.until, "cameras": args.camera, "k": args.k}))
        result = search_result(store, hits, space_id=space, threshold=threshold, thumbnails=args.thumbnails)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def run_clean(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    keep = args.keep_days if args.keep_days is not None else config.sightings.retention_days
    if not keep:
        raise ConfigError("give --keep-days N (or set sightings.retention_days)")
    with _open(args.store) as store:
        removed = store.expire(keep)
        store.audit(getpass.getuser(), "clean", len(removed), detail=f"keep_days={keep}")
    print(json.dumps({"removed_days": [d.isoformat() for d in removed]}))
    return 0


def run_audit(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    with _open(args.store) as store:
        for entry in store.audit_log():
            print(json.dumps(entry))
    return 0


def run_name(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    import numpy as np

    from engines.multitask.recognizers import profile
    from gallery.gallery import Gallery

    if config.gallery.path is None:
        raise ConfigError("naming a pseudonym enrols the identity: give the gallery (--gallery DB)")
    space = profile(config.models.recognizer).model_id
    with _open(args.store) as store:
        members = store.members(args.pseudonym)
        if store.is_rejected(args.pseudonym, args.identity_id):
            raise ConfigError(f"an operator said {args.pseudonym} is not {args.identity_id}; nothing was changed")
        shots = [s for s in members if s.space_id == space][:5]
        if not shots:
            raise ConfigError(f"{args.pseudonym} has no sighting in the configured recognizer's space {space}")
        gallery = Gallery(config.gallery.path, threshold=config.gallery.threshold, create=False,
                          **embedding_space(config))
        try:
            added = gallery.enrol(args.identity_id, np.stack([s.vectors[0] for s in shots]), name=args.name,
                                  quality=[s.quality for s in shots])
        finally:
            gallery.close()
        store.name(args.pseudonym, args.identity_id, args.name or args.identity_id, args.operator or getpass.getuser())
    print(json.dumps({"pseudonym": args.pseudonym, "identity_id": args.identity_id, "relabelled": len(members),
                      "templates_enrolled": len(added)}))
    return 0


def run_reject(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    with _open(args.store) as store:
        s = store.reject(args.sighting, args.identity, args.operator or getpass.getuser())
    print(json.dumps({"sighting_id": s.sighting_id, "pseudonym": s.pseudonym, "rejected_identity": args.identity}))
    return 0


def run_serve(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    from gallery.sightings import SightingsStore
    from stream_worker.cli.files import writable_dir
    from stream_worker.cli.startup import stop_on_signals
    from stream_worker.kafka.client import ensure_topics
    from stream_worker.kafka.sightings_service import SightingsService
    from stream_worker.metrics import WorkerMetrics, serve
    from stream_worker.sightings_feed import SightingsFeed

    writable_dir(args.store, "--store", create=True)
    stop = stop_on_signals()
    if config.kafka.create_topics:
        ensure_topics(config.kafka)
    metrics = WorkerMetrics()
    with SightingsStore(args.store, visit_gap_s=config.sightings.visit_gap_s) as store:
        feed = SightingsFeed(store, min_frames=config.sightings.min_frames, min_quality=config.sightings.min_quality,
                             watch_list_only=args.watch_list_only, metrics=metrics)
        service = SightingsService(config.kafka, feed, idle_exit_ms=args.idle_exit_ms,
                                   retention_days=config.sightings.retention_days)
        server = serve(metrics, service.health, config.metrics.host, config.metrics.port) if config.metrics.port else None
        try:
            counts = service.run(stop)
        finally:
            if server is not None:
                server.shutdown()
    print(json.dumps({"summary": counts}), file=sys.stderr)
    return 0
