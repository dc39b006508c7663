"""The gallery REST API under load: 200 concurrent searches while /health is polled.

Starts ``facestream serve-api`` (defaults: one inference worker per CPU, 32 queued), enrols a
few people, then in the same run:

1. baseline: one client searching alone (per-request service time) and /health idle;
2. load: ``--clients`` searches at once, repeated ``--rounds`` times, while a separate
   process (its own event loop and interpreter: what a liveness probe is) polls /health
   every 20 ms.

Reports latency percentiles per status code, the 429s (requests beyond the queue), and
/health latency under load. The load generator runs on the same cores as the server; it
lowers its own priority (niceness 10), as clients on other machines would take none of the
server's CPU. The /health poller runs at normal priority, as a kubelet's probe does. Run: ``python benchmarks/bench_api.py`` (models in the default
cache, or FACESTREAM__MODELS__HOME).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KNN = REPO.parent / "shared/data/faces/face_recognition/examples/knn_examples"
TOKEN = "benchmark-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (f"p50 {at(0.5):.0f} ms, p90 {at(0.9):.0f} ms, p99 {at(0.99):.0f} ms, max {ordered[-1] * 1000:.0f} ms "
            f"(n={len(values)})")


async def timed(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    return response.status_code, time.perf_counter() - started


POLL = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
while True:
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/health")
    code = connection.getresponse().status
    connection.close()
    print(code, time.perf_counter() - started, flush=True)
    time.sleep(0.02)
"""


def poll_in_a_process(base: str, done: threading.Event) -> list[tuple[int, float]]:
    """Poll /health from another process until ``done``; (status, seconds) per request."""
    host, port = base.removeprefix("http://").split(":")
    process = subprocess.Popen([sys.executable, "-c", POLL, host, port], stdout=subprocess.PIPE, text=True)
    done.wait()
    process.terminate()
    out, _ = process.communicate(timeout=30)
    return [(int(code), float(seconds)) for code, seconds in (line.split() for line in out.splitlines())]


async def load(base: str, photo: bytes, clients: int, rounds: int) -> dict[str, object]:
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        done = threading.Event()
        # baseline: alone
        alone = [(await timed(client, "POST", "/search", headers=AUTH, files={"photo": ("p.jpg", photo)}))[1]
                 for _ in range(10)]
        idle_health = [(await timed(client, "GET", "/health"))[1] for _ in range(50)]
        # load
        health: list[float] = []
        health_codes: collections.Counter[int] = collections.Counter()

        poller = asyncio.create_task(asyncio.to_thread(poll_in_a_process, base, done))
        by_code: dict[int, list[float]] = collections.defaultdict(list)
        started = time.perf_counter()
        for _ in range(rounds):
            results = await asyncio.gather(*(timed(client, "POST", "/search", headers=AUTH,
                                                   files={"photo": ("p.jpg", photo)}) for _ in range(clients)))
            for code, seconds in results:
                by_code[code].append(seconds)
        wall = time.perf_counter() - started
        done.set()
        for code, seconds in await poller:
            health.append(seconds)
            health_codes[code] += 1
    return {"alone": alone, "idle_health": idle_health, "health": health, "health_codes": health_codes,
            "by_code": by_code, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-niceness", type=int, default=10,
                        help="priority of the load generator (0: the same as the server's)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FACESTREAM__API__TOKEN": TOKEN}
        server = subprocess.Popen([sys.executable, "-m", "stream_worker.cli", "serve-api", "--db", f"{tmp}/g.db",
                                   "--port", str(port), "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read() if server.stderr else ''}")
                time.sleep(0.3)
            for person in ("obama", "biden", "alex_lacamoire", "kit_harington", "rose_leslie"):
                photos = sorted((KNN / "train" / person).iterdir())[:2]
                httpx.post(f"{base}/identities/{person}/photos", headers=AUTH, timeout=120,
                           files=[("photos", (p.name, p.read_bytes())) for p in photos]).raise_for_status()
            capacity = httpx.get(f"{base}/health").json()["inference"]
            os.nice(args.client_niceness)  # the load generator yields to the server and the probe (see above)
            photo = (KNN / "test" / "obama_and_biden.jpg").read_bytes()
            result = asyncio.run(load(base, photo, args.clients, args.rounds))
        finally:
            server.terminate()
            server.communicate(timeout=30)
    codes = {code: len(values) for code, values in sorted(result["by_code"].items())}  # type: ignore[attr-defined]
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                      "inference": capacity, "codes": codes, "health_codes": dict(result["health_codes"])}))  # type: ignore[arg-type]
    print(f"search alone (baseline):   {percentiles(result['alone'])}")  # type: ignore[arg-type]
    print(f"/health idle (baseline):   {percentiles(result['idle_health'])}")  # type: ignore[arg-type]
    for code, values in sorted(result["by_code"].items()):  # type: ignore[attr-defined]
        print(f"search under load, {code}:  {percentiles(values)}")
    print(f"/health under load:        {percentiles(result['health'])}")  # type: ignore[arg-type]
    print(f"{args.rounds} rounds of {args.clients} concurrent searches in {result['wall']:.1f} s")
    served = len(result["by_code"].get(200, []))  # type: ignore[attr-defined]
    print(f"throughput: {served / result['wall']:.1f} searches/s served; mean service alone "  # type: ignore[operator]
          f"{statistics.mean(result['alone']) * 1000:.0f} ms")  # type: ignore[arg-type]
    return 1 if 500 in result["by_code"] or max(result["health"]) > 0.1 else 0  # type: ignore[operator, arg-type]


if __name__ == "__main__":
    sys.exit(main())
