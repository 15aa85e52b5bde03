"""The sinks of bench/redundancy.py: a process each (``python bench/redundancy_sink.py
<status>`` prints its port, then serves until stdin closes), so its CPU is never the agent's.
It speaks m3ter's measurements API: it answers ``<status>`` to every POST; on 200 it decodes
the request in full, counts measurements and distinct uids, sums ``measure.seq`` once per
uid, notes each measurement's wait from its ``ts`` to its arrival, and the arrival of the
first request carrying each lease epoch (``X-Meterkit-Lease-Epoch``). ``GET`` answers all
of that as JSON.
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


def serve_sink(status: int) -> ThreadingHTTPServer:
    """The sink: answers ``status`` to every POST (counting only what it answers 200 to)."""
    lock = threading.Lock()
    uids: set[str] = set()
    stats: dict[str, Any] = {"count": 0, "seq_sum": 0, "requests": 0, "first_by_epoch": {}}
    waits: list[int] = []

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
            measurements = orjson.loads(body)["measurements"]
            epoch = self.headers.get("X-Meterkit-Lease-Epoch")
            with lock:
                for m in measurements:
                    if m["uid"] not in uids:  # a uid sent again is counted, not summed twice
                        uids.add(m["uid"])
                        stats["seq_sum"] += int(m.get("measure", {}).get("seq", 0))
                    waits.append(now - wire_ts_ns(m["ts"]))
                stats["count"] += len(measurements)
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

    def __init__(self, status: int = 200) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(status)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = requests.get(self.url, timeout=30).json()
        return found

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


if __name__ == "__main__":
    httpd = serve_sink(int(sys.argv[1]))
    print(httpd.server_address[1], flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or exits)
    httpd.shutdown()
