"""PostgreSQL ingest throughput: measurements per second, and the CPU the ledger spends per
measurement, into one real PostgreSQL server, through one ledger process and through
several behind one address (``meterkit ledger serve --workers N``).

Clients post requests of 1,000 measurements the way the agent's ledger exporter does:
gzip, the bearer token, and ``Meterkit-Validated`` naming the catalog they were validated
against (the trusted path, issue 11 target 3); one run without that header shows what
validating again costs. The bodies are built and compressed before the clock starts, so
the client's own work is only sending. CPU is read from ``/proc`` for the ledger command
and its workers, and for the PostgreSQL server and its backends (both include what their
exited children used): on two cores the two compete, so both are reported. The server is
durable (PostgreSQL's default ``fsync``), every commit paid for as in production. Every run
checks that the ledger stored exactly what was sent.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import requests

import meterkit
from meterkit._model import validation_token

sys.path.insert(0, str(Path(__file__).parent))
from pgserver import running_postgres
from procs import free_port

CATALOG = Path(__file__).resolve().parent.parent / "examples" / "meters.yaml"
BATCH = 1_000
TOKEN = "bench-token"  # noqa: S105 - a throwaway ledger on 127.0.0.1, for this run only
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(root: int) -> float:
    """CPU of a process and every live descendant, plus what their reaped children used."""
    stats: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, fields in stats.items():
            if int(fields[1]) == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    ticks = sum(sum(int(v) for v in stats[pid][11:15]) for pid in tree if pid in stats)
    return ticks / TICK


def _bodies(n: int, tag: str) -> list[bytes]:
    """Requests of BATCH measurements, gzipped, in the shape the agent sends."""
    out = []
    for b in range(n // BATCH):
        items = [
            {
                "uid": f"{tag}-{b:04d}-{i:04d}",
                "meter": "api_calls",
                "account": f"acct-{i % 50}",
                "ts": f"2026-10-{1 + b % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.{i:03d}Z",
                "what": {"endpoint": "/download"},
                "measure": {"calls": 1, "seconds": round(0.001 * (i % 997), 3)},
            }
            for i in range(BATCH)
        ]
        out.append(gzip.compress(orjson.dumps({"measurements": items}), 1))
    return out


def _post_all(url: str, bodies: list[bytes], headers: dict[str, str], clients: int) -> None:
    """Post every body from ``clients`` threads, each on its own connection."""
    work: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    failures: list[str] = []

    def client() -> None:
        session = requests.Session()
        while (body := work.get()) is not None:
            r = session.post(url, data=body, headers=headers, timeout=120)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")
        session.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for _ in threads:
        work.put(None)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"the ledger refused {len(failures)} requests: {failures[0]}")


def _serve(db: str, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "meterkit_agent.cli", "ledger", "serve", "--db", db, "--port", str(port)]
    args += ["--catalog", str(CATALOG), "--workers", str(workers)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN}
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the ledger did not start: {log.read_text()[-1000:]}")


def _one(db: str, postgres_pid: int, workers: int, trusted: bool, n: int, clients: int, log: Path) -> dict[str, Any]:
    proc, url = _serve(db, workers, log)
    try:
        org = f"bench-{uuid.uuid4().hex[:8]}"
        endpoint = f"{url}/organizations/{org}/measurements"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
        if trusted:
            headers["Meterkit-Validated"] = validation_token(meterkit.load_catalog(CATALOG))
        _post_all(endpoint, _bodies(BATCH * clients * workers, f"w{org}"), headers, clients)  # warm every process
        bodies = _bodies(n, org)
        ledger_cpu, pg_cpu = _cpu_seconds(proc.pid), _cpu_seconds(postgres_pid)
        start = time.perf_counter()
        _post_all(endpoint, bodies, headers, clients)
        wall = time.perf_counter() - start
        ledger_cpu, pg_cpu = _cpu_seconds(proc.pid) - ledger_cpu, _cpu_seconds(postgres_pid) - pg_cpu
        usage = requests.get(
            f"{url}/organizations/{org}/usage",
            params={"meter": "api_calls", "aggregation": "COUNT"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
        ).json()["data"]
        stored = sum(int(row["value"]) for row in usage)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    sent = n + BATCH * clients * workers
    if stored != sent:
        raise RuntimeError(f"sent {sent} measurements, the ledger stored {stored}")
    return {
        "ledger_processes": workers,
        "trusted": trusted,
        "measurements": n,
        "wall_s": round(wall, 3),
        "measurements_per_s": round(n / wall),
        "ledger_cpu_us_per_measurement": round(ledger_cpu / n * 1e6, 2),
        "postgres_cpu_us_per_measurement": round(pg_cpu / n * 1e6, 2),
    }


def run(n: int = 60_000, workers: int = 2, clients: int = 4, quick: bool = False) -> dict[str, Any]:
    """Ingest ``n`` measurements (10,000 when ``quick``) per configuration: trusted through
    one ledger process (``one_ledger``) and through ``workers`` behind one address
    (``several_ledgers``), untrusted through one (``untrusted_one_ledger``). Raises
    RuntimeError if the ledger refuses a request or stores other than what was sent."""
    n = 10_000 if quick else n
    with running_postgres(durable=True) as pg, tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ledger.log"
        return {
            "batch": BATCH,
            "clients": clients,
            "durable": True,
            "cores": os.cpu_count(),
            "one_ledger": _one(pg.url, pg.pid, 1, True, n, clients, log),
            "several_ledgers": _one(pg.url, pg.pid, workers, True, n, clients, log),
            "untrusted_one_ledger": _one(pg.url, pg.pid, 1, False, n, clients, log),
        }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
