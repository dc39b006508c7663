"""``facestream gallery ...``: manage a gallery of known people from the command line.

Every command prints JSON (objects, or JSON lines for lists and exports).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import json
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from engines.config import Recognizer
from engines.errors import ConfigError, FaceStreamError
from engines.fileio import atomic_write_bytes
from gallery import validation as valid
from gallery.calibration import DEFAULT_TARGET_FMR, calibrate, labelled_pair_scores
from gallery.config import EnrolPolicy
from gallery.errors import GalleryError
from stream_worker.cli.files import read_image_bytes, readable_file, writable_file
from stream_worker.cli.options import (
    add_config_options,
    add_options,
    add_pipeline_options,
    bounded,
    embedding_space,
    engine_runtime,
    face_analyzer,
    given,
    positive_int,
    quality,
)
from stream_worker.config import FaceStreamConfig, env_name

if TYPE_CHECKING:  # (the models and FAISS load when an action runs, not to parse arguments)
    from gallery.gallery import Gallery
    from stream_worker.photos import FaceAnalyzer

log = logging.getLogger(__name__)

AnalyzerFactory = Callable[[], "FaceAnalyzer"]


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
    enrol.add_argument("--meta", help="metadata as a JSON object (at most 64 KiB, 8 levels deep)")
    enrol.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    enrol.add_argument("--largest-face", action="store_true", help="enrol the largest face of photos with several")
    enrol.add_argument("--min-quality", type=quality, default=EnrolPolicy().min_quality,
                       help="refuse faces below this quality (default %(default)s)")
    enrol.add_argument("--watch", action="store_true",
                       help="a person to look for (e.g. missing): search the stored sightings (--sightings) at once; "
                       "each match is printed and, with --publish, published to the alerts topic")
    enrol.add_argument("--sightings", type=Path, metavar="DIR", help="the sightings store to re-scan with --watch")
    add_pipeline_options(enrol)

    actions.add_parser("list", help="all identities, one JSON object per line")
    show = actions.add_parser("show", help="one identity")
    show.add_argument("identity", metavar="ID")
    remove = actions.add_parser("remove", help="erase an identity, its templates and vectors")
    remove.add_argument("identity", metavar="ID")
    remove.add_argument("--with-sightings", action="store_true",
                        help="also erase every sighting decided as this identity: in the store of --sightings, and "
                        "(with --publish) in every sightings service, which then never stores one named so again")
    remove.add_argument("--sightings", type=Path, metavar="DIR", help="a local sightings store (with --with-sightings)")

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

    reembed = actions.add_parser(
        "reembed", help="move the gallery to another recognizer from its stored face chips (no photos needed)",
        description="Adds, for every stored face chip, a template of the recognizer named by --model. Templates "
        "of the old recognizer stay (switch back by configuration). Templates of SFace's retired raw space "
        "(before its embeddings were centred) are converted exactly where no chip exists. With --publish every "
        "identity is published to the changelog, so workers receive the new templates. Set models.recognizer to the "
        "new one afterwards.")
    reembed.add_argument("--model", required=True, choices=[r.value for r in Recognizer],
                         help="the recognizer to move to")
    add_pipeline_options(reembed)

    cal = actions.add_parser("calibrate", help="set the decision threshold for a false-match rate from labelled pairs")
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path,
                        help="CSV with columns path_a, path_b, same (1/0); paths relative to the CSV's folder")
    source.add_argument("--labels", type=Path,
                        help="CSV of labelled photos with columns path, identity (e.g. CelebA's labels): every "
                        "same-identity pair and every different-identity pair (up to --max-impostors, drawn at "
                        "random beyond) are scored; paths relative to the CSV's folder")
    cal.add_argument("--split", help="with --labels: only the rows whose 'split' column has this value "
                     "(calibrate on people the recognizer and you never tuned on)")
    cal.add_argument("--max-impostors", type=positive_int, default=2_000_000,
                     help="with --labels: most different-person pairs scored (default %(default)s)")
    cal.add_argument("--target-fmr", type=bounded(float, 1e-9, 0.5, "--target-fmr"), default=DEFAULT_TARGET_FMR,
                     help="default %(default)s")
    add_pipeline_options(cal)


def _print(record: Any) -> None:
    print(json.dumps(record))


def run(args: argparse.Namespace, config: FaceStreamConfig) -> int:
    if config.gallery.path is None:
        raise ConfigError(f"name the gallery database with --db PATH (or {env_name(('gallery', 'path'))})")
    _check_arguments(args)  # before any model or gallery is opened
    if args.gallery_command == "reembed":  # the gallery and the models of the target recognizer
        target = Recognizer(args.model)
        config = config.model_copy(update={"models": config.models.model_copy(update={"recognizer": target})})
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
            publisher = GalleryPublisher(make_producer(config.kafka), config.kafka.gallery_topic,
                                         timeout_s=config.kafka.delivery_timeout_ms / 1000)
            stack.callback(publisher.producer.close)
        return _run_gallery(args, config, analyzer, publisher)


def _check_arguments(args: argparse.Namespace) -> None:
    """What the command line says, checked: ids, metadata, files to read, where to write."""
    command = args.gallery_command
    if getattr(args, "identity", None) is not None and command == "enrol":
        args.identity = valid.identity_id(args.identity)
    if getattr(args, "meta", None) is not None:
        args.meta = valid.parse_metadata(args.meta)
    if getattr(args, "name", None) is not None:
        args.name = valid.display_name(args.name)
    if command == "remove" and (args.with_sightings or args.sightings is not None):
        if args.sightings is not None and not args.with_sightings:
            raise ConfigError("--sightings goes with --with-sightings")
        if args.sightings is None and not given(args, "--publish"):
            raise ConfigError("--with-sightings erases sightings in a store (--sightings DIR) or, with --publish, in "
                              "every sightings service; give one")
        if args.sightings is not None and not (args.sightings / "store.sqlite").is_file():
            raise ConfigError(f"--sightings {args.sightings}: not a sightings store (no store.sqlite)")
    if command == "enrol" and (args.watch or args.sightings is not None):
        if not (args.watch and args.sightings is not None):
            raise ConfigError("--watch re-scans a sightings store: give both --watch and --sightings DIR")
        if not (args.sightings / "store.sqlite").is_file():
            raise ConfigError(f"--sightings {args.sightings}: not a sightings store (no store.sqlite)")
    if command == "import":
        readable_file(args.file, "the export to import")
    if command == "calibrate":
        readable_file(args.pairs or args.labels, "the pairs file" if args.pairs else "the labels file")
        if args.split is not None and args.labels is None:
            raise ConfigError("--split goes with --labels")
    if command == "export" and args.out is not None:
        writable_file(args.out, "the export")


def _run_gallery(args: argparse.Namespace, config: FaceStreamConfig, analyzer: AnalyzerFactory,
                 publisher: Any) -> int:
    from gallery.gallery import Gallery

    command = args.gallery_command
    with Gallery(config.gallery.path, create=command in ("enrol", "import", "calibrate"),
                 threshold=config.gallery.threshold, index=config.gallery.index, **embedding_space(config)) as gallery:
        if command == "enrol":
            status = _enrol(args, gallery, analyzer())
            if publisher is not None and any(i.id == args.identity for i in gallery.identities()):
                try:
                    publisher.publish_identity(gallery, args.identity)
                except FaceStreamError as exc:
                    raise type(exc)(f"{exc}. The enrolment is saved in {gallery.path}; publish it with "
                                    f"`facestream gallery --db {gallery.path} --publish BROKERS publish "
                                    f"{args.identity}`") from None
            if args.watch and any(i.id == args.identity for i in gallery.identities()):
                _rescan(args, config, gallery, publisher)
            return status
        if command == "publish":
            if publisher is None:
                raise ConfigError("name the brokers with --publish HOST:PORT")
            for identity_id in args.identities or [i.id for i in gallery.identities()]:
                publisher.publish_identity(gallery, identity_id)
                _print({"published": identity_id, "topic": config.kafka.gallery_topic})
        elif command == "list":
            for identity in gallery.identities():
                _print(identity.to_json())
        elif command == "show":
            _print(gallery.identity(args.identity).to_json())
        elif command == "remove":
            _remove(args.identity, gallery, publisher, args.sightings if args.with_sightings else None,
                    with_sightings=args.with_sightings)
        elif command == "search":
            return _search(args, gallery, analyzer)
        elif command == "stats":
            _print(gallery.stats())
        elif command == "export":
            _export(gallery, args.out)
        elif command == "import":
            try:
                with args.file.open(encoding="utf-8") as f:
                    _print(gallery.import_jsonl(f))
            except UnicodeDecodeError:
                raise GalleryError(f"{args.file}: not a text file (a gallery export is JSON lines)") from None
        elif command == "reembed":
            _reembed(gallery, analyzer(), publisher)
        elif command == "calibrate":
            from engines.runtime.engine import available_cpus

            return _calibrate(args, gallery, analyzer(), config.runtime.workers or available_cpus())
    return 0


def _reembed(gallery: Gallery, analyzer: FaceAnalyzer, publisher: Any) -> None:
    with tqdm(desc=f"re-embedding face chips for {gallery.model}", unit="chip", disable=None, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        result = gallery.reembed(analyzer.embed_chip, progress=progress)
    without = [i.id for i in gallery.identities() if i.templates and gallery.model not in i.templates]
    published = 0
    if publisher is not None:
        for identity in gallery.identities():
            if gallery.model in identity.templates:
                publisher.publish_identity(gallery, identity.id)
                published += 1
    if without:
        log.warning("%d identities have no stored face chip (enrolled before chips were kept, or from vectors); "
                    "re-enrol them from photos: %s", len(without), ", ".join(without[:10]))
    _print({**result, "model": gallery.model, "identities_without_chips": without, "published": published})


def _remove(identity_id: str, gallery: Gallery, publisher: Any, sightings: Path | None = None, *,
            with_sightings: bool = False) -> None:
    """Erase an identity; with --publish the changelog must acknowledge the erasure first
    (so workers, and with ``with_sightings`` sightings services, erase it too), or nothing
    is erased and the error says so. With ``sightings``, the sightings in that store go too
    (after the gallery: a retry finds them still there)."""
    store = None
    if sightings is not None:
        from gallery.sightings import SightingsStore

        store = SightingsStore(sightings, create=False)  # a wrong folder is an error before anything is erased
    try:
        if publisher is not None:
            identity = gallery.identity(identity_id)  # exists? (no publishing for a typo)
            try:
                publisher.publish_erasure(identity.id, with_sightings=with_sightings)
            except FaceStreamError as exc:
                raise type(exc)(f"{exc}. Nothing was erased; run the command again when the brokers answer") from None
        event = gallery.remove(identity_id)
        record = {"erased": event.identity_id, "templates_removed": event.templates_removed,
                  "event_id": event.event_id, "erased_utc": event.erased_utc, "published": publisher is not None}
        if store is not None:
            record["sightings_removed"] = store.erase_identity(identity_id)
            store.audit(getpass.getuser(), "erase", record["sightings_removed"], detail=identity_id)
        _print(record)
    finally:
        if store is not None:
            store.close()


def _rescan(args: argparse.Namespace, config: FaceStreamConfig, gallery: Gallery, publisher: Any) -> None:
    """Re-scan on enrolment: every stored sighting the new identity matches becomes an alert,
    printed as a JSON line and, with --publish, published to the alerts topic (acknowledged)."""
    from gallery.sightings import SightingsStore
    from stream_worker.messages.results import SightingAlert

    identity = gallery.identity(args.identity)
    vectors = np.stack([t.embedding for t in gallery.store.iter_templates()
                        if t.identity_id == args.identity and t.model == gallery.model])
    threshold = gallery.threshold
    with SightingsStore(args.sightings, create=False) as store:
        hits = store.rescan(vectors, gallery.model, threshold=threshold)
        store.audit(getpass.getuser(), "rescan", len(hits), detail=args.identity)
    alerts = [SightingAlert(
        event_id=f"rescan:{args.identity}:{h.sighting.sighting_id}", identity_id=args.identity,
        name=identity.name or args.identity, sighting_id=h.sighting.sighting_id, stream_id=h.sighting.stream_id,
        track_id=h.sighting.track_id, first_frame=h.sighting.first_frame, last_frame=h.sighting.last_frame,
        start_utc=h.sighting.start_utc.isoformat(), end_utc=h.sighting.end_utc.isoformat(), score=h.score,
        threshold=threshold, pseudonym=h.sighting.pseudonym) for h in hits]
    for alert in alerts:
        _print(alert.to_json())
    if publisher is not None and alerts:
        from stream_worker.kafka.changelog import send_acknowledged

        send_acknowledged(publisher.producer, config.kafka.alerts_topic,
                          [(a.stream_id, a.encode()) for a in alerts], f"{len(alerts)} re-scan alerts",
                          publisher.timeout_s, f"the alerts topic {config.kafka.alerts_topic}")
    log.info("re-scan of %s: %d stored sightings match", args.identity, len(alerts))


def _search(args: argparse.Namespace, gallery: Gallery, analyzer: AnalyzerFactory) -> int:
    """Who is in the photo; a photo that cannot be read or decoded is the input's fault (exit 1)."""
    from gallery.enrol import PhotoEnroller

    try:
        data = read_image_bytes(args.image)
        faces = PhotoEnroller(gallery, analyzer()).search(str(args.image), data, k=args.k)
    except FaceStreamError as exc:
        if not exc.skippable:
            raise
        _print({"image": str(args.image), "error": str(exc), "error_type": type(exc).__name__})
        log.error("%s", exc)
        return 1
    _print({"image": str(args.image), "faces": [f.to_json() for f in faces]})
    return 0


def _export(gallery: Gallery, out: Path | None) -> None:
    if out is None:
        for line in gallery.export_jsonl():
            sys.stdout.write(line + "\n")
        return
    data = "".join(line + "\n" for line in gallery.export_jsonl()).encode()
    try:
        atomic_write_bytes(out, data)  # a failed export never leaves half a backup
    except OSError as exc:
        raise ConfigError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    log.info("exported %s to %s (%d bytes)", gallery.path, out, len(data))


def _enrol(args: argparse.Namespace, gallery: Gallery, embedder: FaceAnalyzer) -> int:
    from gallery.enrol import PhotoEnroller

    enroller = PhotoEnroller(gallery, embedder, EnrolPolicy(min_quality=args.min_quality, largest_face=args.largest_face))
    outcomes = []
    for path in tqdm(args.images, desc=f"enrolling {args.identity}", unit="photo", disable=None, file=sys.stderr):
        try:
            data = read_image_bytes(path)
        except FaceStreamError as exc:
            outcomes.append({"source": str(path), "status": "refused", "reason": str(exc)})
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


def _read_rows(path: Path, columns: set[str]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = columns - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return rows


def _embed_photos(root: Path, photos: list[str], analyzer: FaceAnalyzer, workers: int) -> dict[str, np.ndarray]:
    """The largest face's embedding of each photo that has one (others are logged and left out)."""

    def embed(photo: str) -> np.ndarray | None:
        try:
            return analyzer.largest_face(root / photo)[1].embeddings[0]
        except FaceStreamError as exc:
            if not exc.skippable:
                raise
            log.warning("leaving out %s: %s", photo, exc)
            return None

    embeddings: dict[str, np.ndarray] = {}
    # Photos in parallel (decoding and alignment run beside the other photo's models).
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="calibrate") as pool:
        done = pool.map(embed, photos)
        for photo, embedding in tqdm(zip(photos, done), total=len(photos), desc="embedding photos", unit="photo",
                                     disable=None, file=sys.stderr):
            if embedding is not None:
                embeddings[photo] = embedding
    return embeddings


def _checked_calibration(scores: np.ndarray, same: np.ndarray, target_fmr: float) -> Any:
    """:func:`calibrate`, with a set too small to calibrate on reported as the user's error."""
    try:
        return calibrate(scores, same, target_fmr)
    except ValueError as exc:
        raise ConfigError(f"cannot calibrate on this set: {exc} (photos without a usable face are left out)") from None


def _calibrate(args: argparse.Namespace, gallery: Gallery, analyzer: FaceAnalyzer, workers: int) -> int:
    if args.labels is not None:
        return _calibrate_labels(args, gallery, analyzer, workers)
    rows = _read_rows(args.pairs, {"path_a", "path_b", "same"})
    photos = sorted({r[k] for r in rows for k in ("path_a", "path_b")})
    embeddings = _embed_photos(args.pairs.parent, photos, analyzer, workers)
    usable = [r for r in rows if r["path_a"] in embeddings and r["path_b"] in embeddings]
    scores = np.array([embeddings[r["path_a"]] @ embeddings[r["path_b"]] for r in usable])
    same = np.array([r["same"].strip() in ("1", "true", "True") for r in usable])
    result = _checked_calibration(scores, same, args.target_fmr)
    record = {**result.to_json(), "model": gallery.model, "pairs_file": str(args.pairs), "pairs_used": len(usable),
              "pairs_skipped": len(rows) - len(usable)}
    gallery.store.set_threshold(gallery.model, result.threshold, record)
    _print(record)
    return 0


def _calibrate_labels(args: argparse.Namespace, gallery: Gallery, analyzer: FaceAnalyzer, workers: int) -> int:
    rows = _read_rows(args.labels, {"path", "identity"} | ({"split"} if args.split is not None else set()))
    if args.split is not None:
        rows = [r for r in rows if r["split"] == args.split]
    if len({r["identity"] for r in rows}) < 2:
        raise ConfigError(f"{args.labels}: need photos of at least 2 identities"
                          + (f" in split {args.split!r}" if args.split is not None else ""))
    photos = sorted({r["path"] for r in rows})
    identity = {r["path"]: r["identity"] for r in rows}
    embeddings = _embed_photos(args.labels.parent, photos, analyzer, workers)
    used = [p for p in photos if p in embeddings]
    scores, same = labelled_pair_scores(np.stack([embeddings[p] for p in used]) if used else np.zeros((0, gallery.dim)),
                                        np.array([identity[p] for p in used]), max_impostors=args.max_impostors)
    result = _checked_calibration(scores, same, args.target_fmr)
    record = {**result.to_json(), "model": gallery.model, "labels_file": str(args.labels), "split": args.split,
              "photos_used": len(used), "photos_skipped": len(photos) - len(used)}
    gallery.store.set_threshold(gallery.model, result.threshold, record)
    _print(record)
    return 0
