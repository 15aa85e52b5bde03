"""The sinks of bench/redundancy.py: a process each (``python bench/redundancy_sink.py
<status> [latency]`` prints its port, then serves until stdin closes), so its CPU is never
the agent's. It speaks m3ter's measurements API: it answers ``<status>`` to every POST; on
200 it decodes the request in full, counts measurements and distinct uids, sums
``measure.seq`` once per uid, notes the arrival of the first request carrying each lease
epoch (``X-Meterkit-Lease-Epoch``) and, with ``latency``, each measurement's wait from its
``ts`` to its arrival. ``GET`` answers all of that as JSON.

Parsing every measurement's time costs the sink about as much CPU as the agent spends on
the measurement; a sink that only counts leaves the machine's two cores to the agent it
measures (the second-destination figure is the agent's CPU, which contention inflates).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import requests

from meterkit._timefmt import wire_ts_ns


def serve_sink(status: int, latency: bool = True) -> ThreadingHTTPServer:
    """The sink: answers ``status`` to every POST (counting only what it answers 200 to);
    with ``latency``, notes each measurement's wait, so decodes each request as it comes.
    Without, it keeps each request's body and only counts its measurements (``arrived``)
    as it comes: the full decoding and counting is done when ``GET /`` asks for it, once the
    bench has taken the agent's CPU (``GET /?quick`` answers the counts so far)."""
    lock = threading.Lock()
    uids: set[str] = set()
    stats: dict[str, Any] = {"count": 0, "seq_sum": 0, "requests": 0, "arrived": 0, "first_by_epoch": {}}
    waits: list[int] = []
    pending: list[bytes] = []  # request bodies (JSON) not yet counted

    def count(body: bytes, now: int | None) -> None:
        measurements = orjson.loads(body)["measurements"]
        for m in measurements:
            if m["uid"] not in uids:  # a uid sent again is counted, not summed twice
                uids.add(m["uid"])
                stats["seq_sum"] += int(m.get("measure", {}).get("seq", 0))
        if now is not None:
            waits.extend(now - wire_ts_ns(m["ts"]) for m in measurements)
        stats["count"] += len(measurements)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # see bench/sink.py: Nagle would set the pace

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with lock:
                if self.path.endswith("?quick"):
                    found = {k: stats[k] for k in ("requests", "arrived", "first_by_epoch")}
                else:
                    while pending:
                        count(pending.pop(), None)
                    ordered = sorted(waits)
                    found = {**stats, "unique": len(uids), "latency": _quantiles([w / 1e9 for w in ordered])}
            self._answer(200, orjson.dumps(found))

        def do_POST(self) -> None:
            now = time.time_ns()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                stats["requests"] += 1
            if status != 200:
                self._answer(status, b'{"error": "unavailable"}')
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            epoch = self.headers.get("X-Meterkit-Lease-Epoch")
            with lock:
                if latency:
                    count(body, now)
                else:
                    pending.append(body)
                stats["arrived"] += body.count(b'"uid":')  # one per measurement (sorted keys, no spaces)
                if epoch is not None:
                    stats["first_by_epoch"].setdefault(epoch, now / 1e9)
            self._answer(200, b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _quantiles(ordered: list[float]) -> dict[str, float]:
    if not ordered:
        return {"count": 0}

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"count": len(ordered), "p50_s": q(0.5), "p99_s": q(0.99), "max_s": round(ordered[-1], 3)}


class Sink:
    """A sink process, and what it has counted."""

    def __init__(self, status: int = 200, latency: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(status), *(["latency"] if latency else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stats(self) -> dict[str, Any]:
        """Everything counted (every request decoded and counted first)."""
        found: dict[str, Any] = requests.get(self.url, timeout=30).json()
        return found

    def quick(self) -> dict[str, Any]:
        """Requests, measurements arrived and each epoch's first request, without decoding."""
        found: dict[str, Any] = requests.get(f"{self.url}/?quick", timeout=30).json()
        return found

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


if __name__ == "__main__":
    httpd = serve_sink(int(sys.argv[1]), latency="latency" in sys.argv[2:])
    print(httpd.server_address[1], flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or exits)
    httpd.shutdown()
