"""The gallery REST API: FastAPI's test client, then a real server on localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gallery.api import create_app
from gallery.enrol import EnrolPolicy, PhotoEnroller
from gallery.gallery import Gallery
from stream_worker.photos import FaceAnalyzer

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KNN = "face_recognition/examples/knn_examples"


@pytest.fixture()
def client(tmp_path: Path, detector, multitask) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with Gallery(tmp_path / "api.db") as gallery:
        enroller = PhotoEnroller(gallery, FaceAnalyzer(detector, multitask), EnrolPolicy())
        app = create_app(gallery, enroller, token=TOKEN, max_upload_bytes=2 * 2**20)
        with TestClient(app) as test_client:
            yield test_client


def photo(faces_dir: Path, relative: str) -> tuple[str, bytes, str]:
    return (Path(relative).name, (faces_dir / relative).read_bytes(), "image/jpeg")


def test_requests_without_the_token_get_401(client: TestClient) -> None:
    for method, path in (("get", "/identities"), ("get", "/stats"), ("delete", "/identities/x"), ("get", "/export")):
        response = getattr(client, method)(path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert client.request(method.upper(), path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/health").json()["status"] == "ok"  # health needs no token and tells nothing personal


def test_enrol_search_and_erase(client: TestClient, faces_dir: Path) -> None:
    enrolled = client.post(
        "/identities/obama/photos", headers=AUTH,
        files=[("photos", photo(faces_dir, f"{KNN}/train/obama/obama.jpg")),
               ("photos", photo(faces_dir, f"{KNN}/train/obama/obama2.jpg"))],
        data={"name": "Barack Obama", "metadata": json.dumps({"case": 1})},
    )
    assert enrolled.status_code == 201, enrolled.text
    assert [p["status"] for p in enrolled.json()["photos"]] == ["enrolled", "enrolled"]
    client.post("/identities/biden/photos", headers=AUTH, files=[("photos", photo(faces_dir, f"{KNN}/train/biden/biden.jpg"))])

    found = client.post("/search?k=2", headers=AUTH, files={"photo": photo(faces_dir, f"{KNN}/test/obama_and_biden.jpg")})
    assert found.status_code == 200
    matched = {f["matches"][0]["identity_id"] for f in found.json()["faces"] if f["matches"][0]["decision"] == "match"}
    assert matched == {"obama", "biden"}

    assert client.get("/identities/obama", headers=AUTH).json()["metadata"] == {"case": 1}
    assert [i["id"] for i in client.get("/identities", headers=AUTH).json()] == ["biden", "obama"]
    erased = client.delete("/identities/biden", headers=AUTH)
    assert erased.status_code == 200 and erased.json()["templates_removed"] == 1
    assert client.get("/identities/biden", headers=AUTH).status_code == 404
    assert client.delete("/identities/biden", headers=AUTH).status_code == 404
    assert client.get("/erasures", headers=AUTH).json()[0]["identity_id"] == "biden"
    again = client.post("/search", headers=AUTH, files={"photo": photo(faces_dir, f"{KNN}/train/biden/biden.jpg")})
    assert all(m["identity_id"] != "biden" for m in again.json()["faces"][0]["matches"])

    lines = client.get("/export", headers=AUTH).text.splitlines()
    assert json.loads(lines[0])["format"].startswith("facestream-gallery")
    assert client.get("/stats", headers=AUTH).json()["identities"] == 1


def test_bad_uploads(client: TestClient, faces_dir: Path) -> None:
    broken = client.post("/search", headers=AUTH, files={"photo": ("x.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")})
    assert broken.status_code == 422 and "not a decodable image" in broken.json()["detail"]
    huge = client.post("/search", headers=AUTH, files={"photo": ("big.jpg", b"\x00" * (3 * 2**20), "image/jpeg")})
    assert huge.status_code == 413 and "exceeds the limit" in huge.json()["detail"]
    faceless = client.post("/identities/dog/photos", headers=AUTH,
                           files=[("photos", photo(faces_dir, "dlib/examples/faces/dogs.jpg"))])
    assert faceless.status_code == 422 and "no face found" in faceless.json()["photos"][0]["reason"]
    bad_meta = client.post("/identities/x/photos", headers=AUTH, data={"metadata": "[1, 2"},
                           files=[("photos", photo(faces_dir, f"{KNN}/train/biden/biden.jpg"))])
    assert bad_meta.status_code == 422 and "metadata" in bad_meta.json()["detail"]
    assert client.post("/search?k=0", headers=AUTH, files={"photo": ("x.jpg", b"1", "image/jpeg")}).status_code == 422


def test_openapi_documents_every_operation(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/identities", "/identities/{identity_id}", "/identities/{identity_id}/photos", "/search", "/stats",
            "/export", "/import", "/erasures", "/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_on_localhost(model_store, faces_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home), "FACESTREAM__API__TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "stream_worker.cli", "serve-api", "--db", str(tmp_path / "served.db"),
         "--port", str(port), "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        assert httpx.get(f"{base}/identities").status_code == 401
        enrolled = httpx.post(f"{base}/identities/rose/photos", headers=AUTH, timeout=60,
                              files=[("photos", photo(faces_dir, f"{KNN}/train/rose_leslie/img1.jpg"))])
        assert enrolled.status_code == 201, enrolled.text
        found = httpx.post(f"{base}/search", headers=AUTH, timeout=60,
                           files={"photo": photo(faces_dir, f"{KNN}/train/rose_leslie/img2.jpg")})
        best = found.json()["faces"][0]["matches"][0]
        assert best["identity_id"] == "rose" and best["decision"] == "match"
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert TOKEN not in stderr  # the secret never reaches the logs
