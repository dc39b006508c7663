"""Search by photo over everything the cameras saw, end to end: the worker runs over the
Hamilton clip as two cameras (different ids, recorded an hour apart) into one sightings
store, then the ``facestream sightings`` and ``gallery`` commands and the store's own search
are run with photos."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from engines.config import DEFAULT_RECOGNIZER
from engines.multitask.heads import SHIPPED
from engines.multitask.recognizers import profile
from engines.store.model_store import ModelStore
from gallery.defaults import DEFAULT_CALIBRATIONS
from gallery.gallery import Gallery
from gallery.sightings import SightingsError, SightingsStore
from stream_worker.local.sightings_sink import SightingsSink
from stream_worker.local.sinks import JsonLinesSink
from stream_worker.local.worker import Worker
from stream_worker.messages.results import schema_for
from stream_worker.pipeline.face_pipeline import FacePipeline


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run(args: list[str], home: Path) -> Completed:
    """``facestream ARGS`` in this process (the console script itself is tested in test_cli.py;
    here a dozen commands would spend most of their time starting Python)."""
    from stream_worker.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.environ.get("FACESTREAM__MODELS__HOME")
    os.environ["FACESTREAM__MODELS__HOME"] = str(home)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
    finally:
        if previous is None:
            del os.environ["FACESTREAM__MODELS__HOME"]
        else:
            os.environ["FACESTREAM__MODELS__HOME"] = previous
    return Completed(code, out.getvalue(), err.getvalue())

EXAMPLES = "face_recognition/examples"
DAY = (datetime.now(UTC) - timedelta(days=3)).date()
"""The clip is placed three days ago (so that a retention of one day removes it)."""
CAM_A, CAM_B = f"{DAY}T10:00:00+00:00", f"{DAY}T11:00:00+00:00"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, detector, multitask, faces_dir: Path,  # type: ignore[no-untyped-def]
          hamilton_gallery) -> tuple[Path, list[dict]]:  # type: ignore[type-arg]
    """The worker over the clip as two cameras into one store (in-process, with the session's
    models; `facestream run --sightings` itself is run in tests/stream_worker/local/test_worker.py)."""
    out = tmp_path_factory.mktemp("sightings")
    clip = str(faces_dir / EXAMPLES / "short_hamilton_clip.mp4")
    recorded_at = {"cam-a": datetime.fromisoformat(CAM_A), "cam-b": datetime.fromisoformat(CAM_B)}
    with SightingsStore(out / "store") as sightings, SightingsStore(out / "watch-list-only") as watched:
        sink = SightingsSink(sightings, recorded_at=recorded_at)
        watch_sink = SightingsSink(watched, recorded_at=recorded_at, watch_list_only=True)
        worker = Worker(FacePipeline(detector, multitask, hamilton_gallery),
                        [JsonLinesSink(out / "results.jsonl"), sink, watch_sink])
        for camera in recorded_at:
            worker.add_stream(camera, clip)
        worker.run()
        assert sink.counts.stored == sightings.count() > 0
        # watch-list-only: the sightings of named tracks and nothing else (strangers are counted, not stored)
        stored = [sightings.get(i) for i in sightings.ids()]
        assert {s.sighting_id for s in stored if s and s.identity_id} == set(watched.ids())
        assert watch_sink.counts.watch_list_only == sum(s is not None and s.identity_id is None for s in stored) > 0
    messages = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ended = [m for m in messages if m.get("type") == "track_ended"]
    counts = sink.counts  # every ended track is stored or counted as left out
    assert counts.stored + counts.too_short + counts.too_poor == len(ended)
    return out / "store", ended


@pytest.fixture(scope="module")
def lin_search(store, model_store: ModelStore, faces_dir: Path) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """``facestream sightings search`` with Lin's photo, as a user runs it."""
    result = run(["sightings", "search", str(faces_dir / EXAMPLES / "lin-manuel-miranda.png"), "--store", str(store[0]),
                  "--operator", "tester"], model_store.home)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def search(folder: Path, embedding, **filters) -> list:  # type: ignore[no-untyped-def, type-arg]
    """The same search in-process (the photo's embedding from the session's models)."""
    with SightingsStore(folder, create=False) as store:
        return store.search(embedding, space(), threshold=DEFAULT_CALIBRATIONS[space()].threshold, **filters)


def space() -> str:
    return profile(DEFAULT_RECOGNIZER).model_id


def test_a_photo_finds_the_person_first_on_both_cameras_with_their_time_spans(  # type: ignore[no-untyped-def]
        store, lin_search, largest_face) -> None:
    folder, ended = store
    found = lin_search
    matches = [h for h in found["hits"] if h["decision"] == "match"]
    assert matches and all(h["decision"] == "unknown" for h in found["hits"][len(matches):])
    assert {h["camera"] for h in matches} == {"cam-a", "cam-b"}
    # the matches are the tracks the worker itself named Lin (and no track named otherwise)
    lin_tracks = {(e["stream_id"], e["track_id"]) for e in ended
                  if e.get("identity") and e["identity"]["name"] == "Lin-Manuel Miranda"}
    assert lin_tracks and lin_tracks <= {(h["camera"], h["track_id"]) for h in matches}
    shipped = set(json.loads((SHIPPED / "heads.json").read_text())["shipped_attributes"])
    for h in matches:
        assert h["identity"] is None or h["identity"]["name"] == "Lin-Manuel Miranda"
        assert set(h["attributes"]) == shipped and h["expression"]  # the track's smoothed trained-head outputs
        start = datetime.fromisoformat(CAM_A if h["camera"] == "cam-a" else CAM_B)
        for when, pts in (("start_utc", "first_pts_ms"), ("end_utc", "last_pts_ms")):  # stored to the millisecond
            assert abs(datetime.fromisoformat(h[when]) - start - timedelta(milliseconds=h[pts])) < timedelta(milliseconds=1)
    # his close-up (frames 82-210 of the clip) is found on both cameras
    closeups = [h for h in matches if h["first_frame"] <= 90 and h["last_frame"] >= 200]
    assert {h["camera"] for h in closeups} == {"cam-a", "cam-b"}
    assert {v["camera"] for v in found["visits"]} == {"cam-a", "cam-b"}
    # filters: one camera; a time window before cam-b's recording
    lin = largest_face(f"{EXAMPLES}/lin-manuel-miranda.png")[1].embeddings[0]
    assert {h.sighting.stream_id for h in search(folder, lin, cameras=["cam-b"])} == {"cam-b"}
    until = datetime.fromisoformat(CAM_A) + timedelta(minutes=30)
    assert {h.sighting.stream_id for h in search(folder, lin, until=until)} == {"cam-a"}


def test_someone_never_seen_returns_nothing_above_the_threshold(store, largest_face) -> None:  # type: ignore[no-untyped-def]
    for photo in ("face_recognition/examples/knn_examples/train/kit_harington/john1.jpeg",
                  "deepface/tests/unit/dataset/img2.jpg"):
        hits = search(store[0], largest_face(photo)[1].embeddings[0])
        assert hits and not [h for h in hits if h.decision == "match"], photo


def test_a_portrait_finds_a_face_in_the_audience(store, largest_face) -> None:  # type: ignore[no-untyped-def]
    """Barack Obama sits in the clip's audience (frames 213-274, in profile, laughing; checked
    by eye on the thumbnails), never enrolled: his official portrait finds him on both cameras,
    and nothing else."""
    hits = search(store[0], largest_face(f"{EXAMPLES}/obama-480p.jpg")[1].embeddings[0])
    matches = [h.sighting for h in hits if h.decision == "match"]
    assert {s.stream_id for s in matches} == {"cam-a", "cam-b"} and len(matches) == 2
    assert all(s.first_frame >= 211 and s.identity_id is None for s in matches)


def unidentified(folder: Path, ended: list[dict]) -> dict[tuple[str, int], tuple[str, int]]:  # type: ignore[type-arg]
    """(camera, track id) -> (pseudonym, first frame) of every stored sighting without an identity."""
    out = {}
    with SightingsStore(folder, create=False) as sightings:
        for e in ended:
            found = sightings.get(e["event_id"])
            if found is not None and found.identity_id is None:
                assert found.pseudonym is not None and found.pseudonym.startswith("unknown-")
                out[(found.stream_id, found.track_id)] = (found.pseudonym, found.first_frame)
    return out


def test_strangers_keep_one_pseudonym_across_cameras(store) -> None:  # type: ignore[no-untyped-def]
    folder, ended = store
    strangers = unidentified(folder, ended)
    a = {t: p for (camera, t), p in strangers.items() if camera == "cam-a"}
    b = {t: p for (camera, t), p in strangers.items() if camera == "cam-b"}
    assert a and a == b  # each audience person seen on both cameras has one pseudonym on both
    audience = [p for p, first in a.values() if first >= 211]
    assert len(audience) >= 3 and len(set(audience)) == len(audience)  # and different people different ones


def test_not_this_person_changes_the_decision(store, model_store: ModelStore) -> None:  # type: ignore[no-untyped-def]
    folder, ended = store
    closeups = {e["stream_id"]: e["event_id"] for e in ended if e["summary"]["first_frame"] >= 82
                and e.get("identity") and e["identity"]["id"] == "lin"}
    assert set(closeups) == {"cam-a", "cam-b"}
    result = run(["sightings", "reject", closeups["cam-a"], "--identity", "lin", "--store", str(folder),
                  "--operator", "tester"], model_store.home)
    assert result.returncode == 0, result.stderr
    pseudonym = json.loads(result.stdout)["pseudonym"]
    with SightingsStore(folder, create=False) as sightings:
        rejected = sightings.get(closeups["cam-a"])
        assert rejected is not None and rejected.identity_id is None and rejected.pseudonym == pseudonym
        # the same face again, named Lin by a worker (a third camera): the store no longer decides Lin
        again = sightings.get(closeups["cam-b"])
        assert again is not None and again.identity_id == "lin"
        stored = sightings.add(replace(again, sighting_id="cam-c:track:4:ended", stream_id="cam-c"))
        assert stored is not None and stored.identity_id is None and stored.pseudonym == pseudonym
        with pytest.raises(SightingsError, match="not lin"):
            sightings.name(pseudonym, "lin", "Lin-Manuel Miranda", "tester")
    result = run(["sightings", "reject", closeups["cam-b"], "--identity", "alex", "--store", str(folder)],
                 model_store.home)
    assert result.returncode == 2 and "is decided as 'lin'" in result.stderr


def test_naming_a_pseudonym_enrols_the_person_and_relabels_the_past(  # type: ignore[no-untyped-def]
        store, model_store: ModelStore, largest_face, tmp_path: Path) -> None:
    folder, _ = store
    obama = largest_face(f"{EXAMPLES}/obama-480p.jpg")[1].embeddings[0]
    (pseudonym,) = {h.sighting.pseudonym for h in search(folder, obama) if h.decision == "match"}
    Gallery(tmp_path / "people.db", model=space(), dim=len(obama)).close()
    result = run(["sightings", "name", str(pseudonym), "--id", "obama", "--name", "Barack Obama", "--store",
                  str(folder), "--gallery", str(tmp_path / "people.db"), "--operator", "tester"], model_store.home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["relabelled"] == 2  # his sighting on each camera
    matches = [h.sighting for h in search(folder, obama) if h.decision == "match"]
    assert len(matches) == 2 and {(s.identity_id, s.identity_name) for s in matches} == {("obama", "Barack Obama")}
    gallery = Gallery(tmp_path / "people.db", model=space(), dim=len(obama), create=False)
    try:  # enrolled from the audience shots: his portrait now finds him in the gallery
        (best, *_), = gallery.search(obama[None], k=1)
        assert best.identity_id == "obama" and best.decision == "match"
    finally:
        gallery.close()


def test_enrolling_with_watch_alerts_for_every_stored_sighting_of_the_person(  # type: ignore[no-untyped-def]
        store, model_store: ModelStore, faces_dir: Path, largest_face, tmp_path: Path) -> None:
    folder, ended = store
    named_alex = {e["event_id"] for e in ended if e.get("identity") and e["identity"]["id"] == "alex"}
    assert {i.split(":")[0] for i in named_alex} == {"cam-a", "cam-b"}
    db = tmp_path / "watch.db"
    result = run(["gallery", "--db", str(db), "enrol", "--id", "alex", "--name", "Alex Lacamoire", "--watch",
                  "--sightings", str(folder), str(faces_dir / EXAMPLES / "alex-lacamoire.png")], model_store.home)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    alerts = [r for r in records if r.get("type") == "sighting_matched"]
    for alert in alerts:
        jsonschema.validate(alert, schema_for(alert["schema"]))
    assert named_alex <= {a["sighting_id"] for a in alerts}  # every sighting the worker named him
    assert {a["identity_id"] for a in alerts} == {"alex"}
    with SightingsStore(folder, create=False) as sightings:  # each alert carries its sighting's pseudonym, if any
        assert [a["pseudonym"] for a in alerts] == [sightings.get(a["sighting_id"]).pseudonym  # type: ignore[union-attr]
                                                    for a in alerts]
    # and nothing that is someone else: each alert is a sighting his photo matches in the store itself
    alex = largest_face(f"{EXAMPLES}/alex-lacamoire.png")[1].embeddings[0]
    assert {a["sighting_id"] for a in alerts} == {h.sighting.sighting_id for h in search(folder, alex)
                                                  if h.decision == "match"}
    # erasure with --with-sightings: none of his sightings is left, searched with his own embedding
    result = run(["gallery", "--db", str(db), "remove", "alex", "--with-sightings", "--sightings", str(folder)],
                 model_store.home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sightings_removed"] == len(named_alex)
    result = run(["gallery", "--db", str(db), "remove", "alex", "--with-sightings"], model_store.home)
    assert result.returncode == 2 and "--publish" in result.stderr  # where would they be erased?
    assert not [h for h in search(folder, alex) if h.decision == "match" or h.sighting.identity_id == "alex"]
    result = run(["gallery", "--db", str(db), "enrol", "--id", "x", "--watch", str(faces_dir / EXAMPLES /
                  "alex-lacamoire.png")], model_store.home)
    assert result.returncode == 2 and "--sightings" in result.stderr


def test_the_rest_api_searches_sightings_with_a_token_of_its_own(  # type: ignore[no-untyped-def]
        store, hamilton_gallery, detector, multitask, faces_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from gallery.api import create_app
    from gallery.enrol import EnrolPolicy, PhotoEnroller
    from stream_worker.photos import FaceAnalyzer

    gallery_token, search_token = "gallery-token-0123456789", "search-token-0123456789"
    photo = (faces_dir / EXAMPLES / "lin-manuel-miranda.png").read_bytes()
    with SightingsStore(store[0], create=False) as sightings:
        enroller = PhotoEnroller(hamilton_gallery, FaceAnalyzer(detector, multitask), EnrolPolicy())
        app = create_app(hamilton_gallery, enroller, token=gallery_token, sightings=sightings,
                         sightings_token=search_token)
        with TestClient(app) as client:
            def post(token: str, **params: object):  # type: ignore[no-untyped-def]
                return client.post("/sightings/search", params=params, headers={"Authorization": f"Bearer {token}"},
                                   files={"photo": ("lin.png", photo, "image/png")})

            assert post(gallery_token).status_code == 401  # the gallery's token does not open the sightings
            assert client.get("/identities", headers={"Authorization": f"Bearer {search_token}"}).status_code == 401
            answer = post(search_token, operator="investigator-7")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            matches = [h for h in body["hits"] if h["decision"] == "match"]
            assert {h["camera"] for h in matches} >= {"cam-a", "cam-b"} and body["visits"]  # (and cam-c, added above)
            only_a = post(search_token, camera="cam-a", until=f"{DAY}T10:30:00Z").json()
            assert {h["camera"] for h in only_a["hits"]} == {"cam-a"}
            assert post(search_token, since="yesterday").status_code == 422
            # "not this person" through the API: Lin's sighting on cam-b is not Alex (409), then it is not Lin
            named_lin = [h for h in matches if h["identity"] and h["identity"]["id"] == "lin"]
            assert named_lin  # (his tracks on stage, and his close-up on cam-b)
            reject = f"/sightings/{named_lin[0]['sighting_id']}/reject"
            auth = {"Authorization": f"Bearer {search_token}"}
            assert client.post(reject, params={"identity": "alex"}, headers=auth).status_code == 409  # not Alex's
            assert client.post("/sightings/cam-z:track:1:ended/reject", params={"identity": "lin"},
                               headers=auth).status_code == 404
            answer = client.post(reject, params={"identity": "lin", "operator": "investigator-7"}, headers=auth)
            assert answer.status_code == 200 and answer.json()["pseudonym"].startswith("unknown-")
            assert sightings.get(named_lin[0]["sighting_id"]).identity_id is None  # type: ignore[union-attr]
        entries = [e for e in sightings.audit_log() if e["operator"] == "api:investigator-7"]
        assert entries[0]["action"] == "search" and entries[0]["results"] == len(matches)
    with pytest.raises(ValueError, match="its own token"):
        create_app(hamilton_gallery, enroller, token=gallery_token, sightings=sightings, sightings_token=gallery_token)


def test_every_search_is_audited_and_retention_removes_whole_days(  # type: ignore[no-untyped-def]
        store, lin_search, model_store: ModelStore, largest_face) -> None:
    folder, _ = store
    result = run(["sightings", "audit", "--store", str(folder)], model_store.home)
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["action"] for e in entries} == {"search", "reject", "name", "rescan", "erase"}  # each is audited
    (entry,) = [e for e in entries if e["action"] == "search" and e["operator"] == "tester"]
    assert entry["operator"] == "tester" and entry["action"] == "search" and len(entry["query_sha256"]) == 64
    assert entry["results"] == len([h for h in lin_search["hits"] if h["decision"] == "match"])
    # the store's one day is three days old: a retention of one day removes it, whole
    result = run(["sightings", "clean", "--store", str(folder), "--keep-days", "1"], model_store.home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed_days"] == [DAY.isoformat()]
    assert not list((folder / "days").iterdir())
    assert search(folder, largest_face(f"{EXAMPLES}/lin-manuel-miranda.png")[1].embeddings[0]) == []


def test_sighting_options_are_checked_before_the_models_load(model_store: ModelStore, tmp_path: Path) -> None:
    result = run(["run", "--source", "a=x.mp4", "--sightings", str(tmp_path / "s"), "--recorded-at", "b=2026-01-01Z"],
                 model_store.home)
    assert result.returncode == 2 and "--recorded-at" in result.stderr and "Traceback" not in result.stderr
    result = run(["run", "--source", "a=x.mp4", "--sightings", str(tmp_path / "s"), "--recorded-at",
                  "a=2026-01-01T10:00:00"], model_store.home)
    assert result.returncode == 2 and "time zone" in result.stderr
    result = run(["sightings", "search", str(tmp_path / "none.jpg"), "--store", str(tmp_path)], model_store.home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
