"""Gallery behaviour: erasure, models, duplicates, persistence, corruption, backups."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gallery.errors import EnrolmentRefusedError, GalleryCorruptError, IdentityNotFoundError
from gallery.gallery import Gallery
from gallery.index import stamp_path


def vectors(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)


def test_erasure_removes_vectors_and_records_an_event(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.enrol("alice", vectors(1, 3), name="Alice", metadata={"list": "missing persons"})
        gallery.enrol("bob", vectors(2))
        assert gallery.search(vectors(1)[:1], k=1)[0][0].identity_id == "alice"
        event = gallery.remove("alice")
        assert (event.identity_id, event.templates_removed) == ("alice", 3)
        after = gallery.search(vectors(1)[:1], k=5)[0]
        assert [m.identity_id for m in after] == ["bob"]
        with pytest.raises(IdentityNotFoundError):
            gallery.identity("alice")
        erasures = gallery.store.erasures()
        assert [(e.identity_id, e.templates_removed) for e in erasures] == [("alice", 3)]
    # the erased vectors are gone from the database file and from the index cache on disk
    raw = (tmp_path / "g.db").read_bytes()
    assert vectors(1, 3)[0].astype("<f4").tobytes()[:64] not in raw
    with Gallery(tmp_path / "g.db") as reopened:
        assert [m.identity_id for m in reopened.search(vectors(1)[:1], k=5)[0]] == ["bob"]


def test_templates_of_another_model_are_never_searched(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", model="old-model@1", dim=128) as old:
        old.enrol("carol", vectors(3))
        old.enrol("dave", vectors(4))
    with Gallery(tmp_path / "g.db", model="new-model@2", dim=128, threshold=0.5) as new:
        new.enrol("dave", vectors(5))
        results = new.search(vectors(3)[:1], k=5)[0]
        assert [m.identity_id for m in results] == ["dave"]  # carol's only template is of the old model
        stats = new.stats()
        assert stats["identities_needing_reenrolment"] == ["carol"]
        assert stats["templates"] == {"old-model@1": 2, "new-model@2": 1}


def test_duplicate_photos(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        assert len(gallery.enrol("erin", vectors(6), image_sha256=["abc"])) == 1
        assert gallery.enrol("erin", vectors(6), image_sha256=["abc"]) == []  # same photo again: skipped
        with pytest.raises(EnrolmentRefusedError, match="already enrolled for identity 'erin'"):
            gallery.enrol("frank", vectors(6), image_sha256=["abc"])
        assert gallery.identity("erin").templates == {gallery.model: 1}


def test_decisions_use_the_threshold(tmp_path: Path) -> None:
    probe = vectors(7)
    near = probe + 0.05 * vectors(8)
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.enrol("gina", near)
        gallery.enrol("hank", vectors(9))
        best, other = gallery.search(probe, k=2)[0]
        assert best.identity_id == "gina" and best.decision == "match" and best.score >= gallery.threshold
        assert other.decision == "unknown"
        assert "FaceStream default" in gallery.threshold_source()[1]
        gallery.store.set_threshold(gallery.model, 0.9999, {"target_fmr": 1e-4})
        assert gallery.search(probe, k=1)[0][0].decision == "unknown"


def test_reopen_uses_the_saved_index_and_rebuilds_a_stale_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "g.db"
    with Gallery(path) as gallery:
        for i in range(20):
            gallery.enrol(f"p{i}", vectors(100 + i))
    with caplog.at_level(logging.WARNING, logger="gallery"):
        Gallery(path).close()
    assert not caplog.records  # the saved index matched the database
    # another writer changes the database behind the cache's back
    db = sqlite3.connect(path)
    db.execute("DELETE FROM templates WHERE identity_id = 'p3'")
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, logger="gallery"), Gallery(path) as gallery:
        assert "rebuilding it from the database" in caplog.text
        assert "p3" not in {m.identity_id for m in gallery.search(vectors(103), k=20)[0]}


def test_corrupted_index_file_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "g.db"
    with Gallery(path) as gallery:
        gallery.enrol("ivan", vectors(10))
        index_file = gallery._index_path
    index_file.write_bytes(b"\x00" * 100)
    with caplog.at_level(logging.WARNING, logger="gallery"), Gallery(path) as gallery:
        assert str(index_file) in caplog.text and "checksum" in caplog.text
        assert gallery.search(vectors(10), k=1)[0][0].identity_id == "ivan"  # never a silent empty gallery
    stamp_path(index_file).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gallery"), Gallery(path) as gallery:
        assert gallery.search(vectors(10), k=1)[0][0].identity_id == "ivan"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b"this is not a database at all" * 50), "cannot be read"),
        (lambda p: p.write_bytes(p.read_bytes()[:4096]), "cannot be read|not a FaceStream gallery"),
        (lambda p: sqlite3.connect(p).execute("CREATE TABLE x (y)").connection.commit(), None),
    ],
)
def test_corrupted_database_gives_an_error_naming_the_file(tmp_path: Path, damage, message: str | None) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "g.db"
    if message is None:  # a valid SQLite file that is not a gallery
        damage(path)
        message = "not a FaceStream gallery"
    else:
        with Gallery(path) as gallery:
            gallery.enrol("judy", vectors(11, 50))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        damage(path)
    with pytest.raises(GalleryCorruptError, match=message) as info:
        Gallery(path)
    assert str(path) in str(info.value)


SAVER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from gallery.gallery import Gallery
    gallery = Gallery(Path(sys.argv[1]))
    rng = np.random.default_rng(0)
    i = len(gallery.identities())
    while True:
        gallery.enrol(f"x{i}", rng.standard_normal((20, 128)).astype(np.float32))
        gallery.save()
        print(i, flush=True)
        i += 1
""")


def test_killed_while_saving_leaves_a_loadable_gallery(tmp_path: Path) -> None:
    """SIGKILL a process that keeps enrolling and saving, five times at random moments; each
    time the gallery reopens consistent: every identity has all of its templates."""
    path = tmp_path / "g.db"
    with Gallery(path) as gallery:
        gallery.enrol("before", vectors(12))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = np.random.default_rng()
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        for _ in range(int(rng.integers(3, 15))):  # let it commit a few batches, then kill it at a random moment
            proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Gallery(path) as gallery:
            stats = gallery.stats()
            identities = gallery.identities()
            assert all(i.templates == {gallery.model: 1 if i.id == "before" else 20} for i in identities)
            assert stats["searchable_templates"] == stats["templates"][gallery.model] == 1 + 20 * (len(identities) - 1)
            assert gallery.search(vectors(12), k=1)[0][0].identity_id == "before"


def test_export_import_round_trip(tmp_path: Path) -> None:
    with Gallery(tmp_path / "a.db") as source:
        source.enrol("kate", vectors(13, 2), name="Kate", metadata={"case": 17}, image_sha256=["h1", "h2"])
        source.enrol("leo", vectors(14))
        lines = list(source.export_jsonl())
    with Gallery(tmp_path / "b.db") as target:
        counts = target.import_jsonl(lines)
        assert counts == {"identities": 2, "templates": 3, "skipped": 0}
        assert target.identity("kate").metadata == {"case": 17}
        assert target.search(vectors(13)[:1], k=1)[0][0].identity_id == "kate"
        assert target.import_jsonl(lines)["skipped"] == 2  # the photos with hashes are not added twice


def test_bad_embeddings_are_refused(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        with pytest.raises(ValueError, match="128-dimensional"):
            gallery.enrol("x", np.zeros((1, 64), np.float32))
        with pytest.raises(ValueError, match="finite and non-zero"):
            gallery.enrol("x", np.zeros((1, 128), np.float32))
        assert gallery.search(vectors(1), k=3) == [[]]


def test_two_processes_sharing_one_file_see_each_others_changes(tmp_path: Path) -> None:
    """A worker and `facestream gallery` (or the REST API) on the same database file."""
    with Gallery(tmp_path / "g.db") as worker, Gallery(tmp_path / "g.db") as operator:
        worker.enrol("bob", vectors(2))
        assert worker.search(vectors(1)[:1], k=5)[0][0].identity_id == "bob"
        operator.enrol("alice", vectors(1), image_sha256=["a1"])  # the worker's index does not have it yet
        assert worker.search(vectors(1)[:1], k=1)[0][0].identity_id == "alice"
        assert worker.enrol("alice", vectors(1), image_sha256=["a1"]) == []  # already there: skipped
        operator.enrol("carol", vectors(3))
        worker.enrol("dave", vectors(4))  # the operator wrote just before: the worker rebuilds, keeps both
        assert {worker.search(vectors(s)[:1], k=1)[0][0].identity_id for s in (3, 4)} == {"carol", "dave"}
        operator.remove("alice")
        assert "alice" not in {m.identity_id for m in worker.search(vectors(1)[:1], k=5)[0]}
        assert {m.identity_id for m in operator.search(vectors(4)[:1], k=5)[0]} >= {"dave"}


# --- what the gallery refuses -----------------------------------------------------------------


def _gallery_with_index(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    db = tmp_path / "people.db"
    with Gallery(db) as gallery:
        gallery.enrol("alice", vectors(1, 2))
    files = {p: p.read_bytes() for p in tmp_path.iterdir() if p.name != db.name}
    assert any(p.suffix == ".faiss" for p in files)
    return db, files


@pytest.mark.parametrize("damage, message", [
    (lambda db: db.write_bytes(b""), "the file is empty"),  # `: > people.db`
    (lambda db: db.write_bytes(db.read_bytes()[:5000]), "cannot be read"),  # truncated
    (lambda db: db.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a database" * 100), "cannot be read"),
    (lambda db: (db.unlink(), sqlite3.connect(db).execute("PRAGMA user_version = 7").connection.commit()),
     "an SQLite database without a FaceStream gallery"),  # an SQLite file with nothing in it
    (lambda db: (db.unlink(), sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()),
     "an SQLite database, but not a FaceStream gallery"),
])
def test_a_damaged_database_is_an_error_naming_the_file_and_nothing_is_overwritten(tmp_path: Path, damage,  # type: ignore[no-untyped-def]
                                                                                   message: str) -> None:
    db, others = _gallery_with_index(tmp_path)
    damage(db)
    damaged = db.read_bytes()
    for create in (False, True):
        with pytest.raises(GalleryCorruptError, match=message) as refused:
            Gallery(db, create=create)
        assert str(db) in str(refused.value)
    assert db.read_bytes() == damaged  # not turned into an empty gallery
    assert {p: p.read_bytes() for p in others} == others  # the index cache that still holds the vectors: kept


def test_a_new_gallery_is_created_whole(tmp_path: Path) -> None:
    db = tmp_path / "new" / "people.db"
    with Gallery(db) as gallery:
        assert gallery.identities() == []
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(".")) == []  # no creation leftovers


@pytest.mark.parametrize("bad, why", [
    ("", "blank"), ("   ", "blank"), ("a" * 129, "at most 128"), ("nul\x00id", "control character"),
    ("line\nbreak", "control character"), ("zero\u200bwidth", "format character"),
    ("bidi\u202eoverride", "format character"), ("..", "slash or is a dot name"), ("a/b", "slash"),
    ("a\\b", "slash"), (" padded", "starts or ends with a space"), ("\ud800", "surrogate"),
])
def test_bad_identity_ids_are_refused(tmp_path: Path, bad: str, why: str) -> None:
    from gallery.validation import InvalidInputError

    with Gallery(tmp_path / "g.db") as gallery:
        with pytest.raises(InvalidInputError, match=why):
            gallery.enrol(bad, vectors(1))
        assert gallery.identities() == []


def test_identity_ids_are_compared_in_their_nfc_form(tmp_path: Path) -> None:
    composed, decomposed = "jos\u00e9", "jose\u0301"
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.enrol(decomposed, vectors(1))
        gallery.enrol(composed, vectors(2))
        assert [i.id for i in gallery.identities()] == [composed]
        assert gallery.identity(decomposed).templates == {gallery.model: 2}
        assert gallery.remove(decomposed).templates_removed == 2


def test_a_near_identical_embedding_of_another_identity_is_refused(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.enrol("alice", vectors(1))
        copy = vectors(1) + 0.02 * vectors(9)  # cosine about 0.9998: the same face, re-encoded
        with pytest.raises(EnrolmentRefusedError, match=r"near-identical copy \(cosine 0\.99\d\d >= 0\.99\) of a "
                                                         r"template of identity 'alice'"):
            gallery.enrol("bob", copy)
        assert len(gallery.enrol("alice", copy)) == 1  # the same identity may have it
        assert len(gallery.enrol("bob", copy, refuse_near_duplicates=False)) == 1  # a replica copies decisions


@pytest.mark.parametrize("line, message", [
    ("[]", "neither an identity nor a template"),
    ('{"identity": {}}', r"identity\.id: Field required"),
    ('{"template": {"identity_id": "x", "model": "m", "embedding": [0.5, 0.5]}}', "a 2-D embedding"),
    ('{"template": {"identity_id": "x", "model": "m", "embedding": [NaN' + ", 0.1" * 127 + "]}}",
     "not JSON"),
    ('{"identity": {"id": "x", "name": "X", "metadata": ' + '{"a": ' * 20 + "1" + "}" * 20 + "}}",
     "nested deeper than 8"),
    ('{"identity": {"id": "x", "name": "X", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}}",
     "nested too deeply"),
    ('{"identity": {"id": "bad\\u0000id", "name": "X", "metadata": {}}}', "control character"),
    ("not json", "not JSON"),
])
def test_a_bad_import_is_refused_whole_naming_the_line(tmp_path: Path, line: str, message: str) -> None:
    from gallery.errors import GalleryError

    with Gallery(tmp_path / "source.db") as source:
        source.enrol("alice", vectors(1), image_sha256=["p1"])
        export = list(source.export_jsonl())
    with Gallery(tmp_path / "target.db") as target:
        for bad in (export[:1] + [line] + export[1:], export + [line]):  # first or last: nothing is applied
            with pytest.raises(GalleryError, match=f"import line {bad.index(line) + 1}: .*{message}"):
                target.import_jsonl(bad)
            assert target.identities() == [] and target.store.template_counts() == {}
        assert target.import_jsonl(export) == {"identities": 1, "templates": 1, "skipped": 0}


def test_an_import_refers_only_to_identities_it_or_the_gallery_has(tmp_path: Path) -> None:
    from gallery.errors import GalleryError

    with Gallery(tmp_path / "source.db") as source:
        source.enrol("alice", vectors(1))
        header, _, template = list(source.export_jsonl())
    with Gallery(tmp_path / "target.db") as target:
        with pytest.raises(GalleryError, match="line 2: a template of identity 'alice', which is neither in the file"):
            target.import_jsonl([header, template])
        assert target.store.template_counts() == {}
