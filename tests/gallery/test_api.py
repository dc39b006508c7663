"""The gallery REST API: FastAPI's test client, then a real server on localhost."""

from __future__ import annotations

import json
import os
import re
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


def test_a_huge_image_is_refused_from_its_header(client: TestClient) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, "PNG")  # 144 M pixels in a few hundred KB
    assert len(buffer.getvalue()) < 2 * 2**20
    refused = client.post("/search", headers=AUTH, files={"photo": ("big.png", buffer.getvalue(), "image/png")})
    assert refused.status_code == 422
    assert "12000x12000 = 144000000 pixels exceeds the decode limit" in refused.json()["detail"]


@pytest.mark.parametrize("metadata, why", [
    ('{"a": ' * 5_000 + "1" + "}" * 5_000, "nested deeper"),  # was a RecursionError: 500
    ('{"a": "' + "x" * 70_000 + '"}', "larger than 65536 bytes"),
    ('{"a": NaN}', "finite"),
    ("[1, 2", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_metadata_is_a_422(client: TestClient, faces_dir: Path, metadata: str, why: str) -> None:
    response = client.post("/identities/x/photos", headers=AUTH, data={"metadata": metadata},
                           files=[("photos", photo(faces_dir, f"{KNN}/train/biden/biden.jpg"))])
    assert response.status_code == 422 and why in response.json()["detail"]
    assert client.get("/identities", headers=AUTH).json() == []


@pytest.mark.parametrize("identity", ["bad%00id", "bidi%E2%80%AEid", "%2E%2E", "%20", "x" * 129, "zero%E2%80%8Bwidth"])
def test_bad_identity_ids_are_a_422(client: TestClient, faces_dir: Path, identity: str) -> None:
    response = client.post(f"/identities/{identity}/photos", headers=AUTH,
                           files=[("photos", photo(faces_dir, f"{KNN}/train/biden/biden.jpg"))])
    assert response.status_code == 422, response.text
    assert client.get(f"/identities/{identity}", headers=AUTH).status_code == 422
    assert client.get("/identities", headers=AUTH).json() == []


@pytest.mark.parametrize("line", ["[]", '{"identity": {}}', '{"template": {"identity_id": "a", "model": "m", '
                                  '"embedding": [0.1, 0.2]}}', '{"identity": {"id": "a", "name": "A", "metadata": '
                                  '{"x": NaN}}}'])
def test_a_bad_import_is_a_422_and_imports_nothing(client: TestClient, line: str) -> None:
    lines = ['{"format": "facestream-gallery-templates/1", "dim": 128}',
             '{"identity": {"id": "kept-out", "name": "K", "metadata": {}}}', line]
    response = client.post("/import", headers=AUTH, files={"backup": ("x.jsonl", "\n".join(lines).encode())})
    assert response.status_code == 422 and "line 3" in response.json()["detail"]
    assert client.get("/identities", headers=AUTH).json() == []


def test_openapi_documents_every_operation_and_the_docs_need_no_network(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/identities", "/identities/{identity_id}", "/identities/{identity_id}/photos", "/search", "/stats",
            "/export", "/import", "/erasures", "/health"} <= set(spec["paths"])
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert scripts and all(s.startswith("/") for s in scripts)  # served by the API itself
    for asset in scripts:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[str]]]:  # type: ignore[no-untyped-def]
    """`facestream serve-api` in its own process: a 2 MiB body limit, one inference worker
    and one queued request (so the pool fills up in a test)."""
    port = free_port()
    env = {**os.environ, "FACESTREAM__MODELS__HOME": str(model_store.home), "FACESTREAM__API__TOKEN": TOKEN,
           "FACESTREAM__API__INFERENCE_WORKERS": "1", "FACESTREAM__API__QUEUE_LIMIT": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_worker.cli", "serve-api", "--db", str(tmp_path_factory.mktemp("api") / "s.db"),
         "--port", str(port), "--device", "cpu", "--max-upload-mb", "2"],
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
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=30)


def test_real_server_on_localhost(server: tuple[str, subprocess.Popen[str]], faces_dir: Path) -> None:
    base, _ = server
    assert httpx.get(f"{base}/identities").status_code == 401
    enrolled = httpx.post(f"{base}/identities/rose/photos", headers=AUTH, timeout=60,
                          files=[("photos", photo(faces_dir, f"{KNN}/train/rose_leslie/img1.jpg"))])
    assert enrolled.status_code == 201, enrolled.text
    found = httpx.post(f"{base}/search", headers=AUTH, timeout=60,
                       files={"photo": photo(faces_dir, f"{KNN}/train/rose_leslie/img2.jpg")})
    best = found.json()["faces"][0]["matches"][0]
    assert best["identity_id"] == "rose" and best["decision"] == "match"


def _raw_request(base: str, head: str, body_chunks: Iterator[bytes] = iter(())) -> tuple[int, int]:
    """Send a request by hand (headers first, then body chunks while the server reads them);
    returns (status, body bytes the server took before it answered)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        sock.settimeout(0.05)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                pass
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(10)
        while b"\r\n" not in answer:
            answer += sock.recv(4096)
    return int(answer.split()[1]), sent


def _chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A multipart upload of one file part of ``total`` bytes, as HTTP/1.1 chunks."""
    part = b'--b\r\nContent-Disposition: form-data; name="photo"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    for n in range(total // size):
        data = (part if n == 0 else b"") + b"\0" * size
        yield f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_the_token_is_checked_before_the_body_is_read(server: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = server
    head = "POST /search HTTP/1.1\nHost: x\nContent-Type: multipart/form-data; boundary=b\nTransfer-Encoding: chunked\n"
    status, taken = _raw_request(base, head, _chunked(300 * 2**20))  # 300 MB, no Content-Length, no token
    assert status == 401 and taken < 16 * 2**20  # answered at the headers: the body was never read in full


def test_a_body_over_the_limit_is_cut_off_as_it_streams(server: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = server
    head = (f"POST /search HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
            "Content-Type: multipart/form-data; boundary=b\nTransfer-Encoding: chunked\n")
    status, taken = _raw_request(base, head, _chunked(300 * 2**20))
    assert status == 413 and taken < 16 * 2**20
    declared = f"POST /search HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\nContent-Length: 500000000\n"
    assert _raw_request(base, declared)[0] == 413  # refused from the header, before any byte of the body


def test_a_full_inference_pool_answers_429_and_health_stays_up(server: tuple[str, subprocess.Popen[str]],
                                                                faces_dir: Path) -> None:
    import concurrent.futures

    base, _ = server
    group = photo(faces_dir, f"{KNN}/test/obama_and_biden.jpg")

    def search(_: int) -> int:
        return httpx.post(f"{base}/search", headers=AUTH, timeout=120, files={"photo": group}).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        searches = [pool.submit(search, i) for i in range(12)]
        health = httpx.get(f"{base}/health", timeout=30)  # while 12 searches compete for 1 worker + 1 place
        codes = [s.result() for s in searches]
    assert health.status_code == 200
    assert set(codes) == {200, 429} and codes.count(200) >= 2, codes  # the worker's and the queue's, then 429s
    assert httpx.get(f"{base}/health", timeout=5).json()["inference"]["refused"] >= codes.count(429)


def test_the_model_workers_end_with_the_server_and_the_token_never_reaches_the_logs(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    _, process = server
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 1  # FACESTREAM__API__INFERENCE_WORKERS=1
    process.kill()  # SIGKILL: the server cannot clean up
    _, stderr = process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "a model worker outlived the server"
        time.sleep(0.1)
    assert TOKEN not in stderr
