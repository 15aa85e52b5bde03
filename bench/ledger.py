"""The ledger's store: what ingest costs, what a stored measurement takes on disk, and what
usage queries cost as the data grows.

- **Ingest**: total process CPU (every thread; SQLite and the driver run in this process)
  per measurement for trusted batches of 1,000 measurements (``Ledger.ingest``, as the
  API calls it once it skips validation), into a fresh database, with synchronous=FULL;
  the wall time beside it (it includes the fsync of every commit). On PostgreSQL the CPU
  is this process's only (the server's is its own; ``bench/postgres.py`` measures both).
- **Bytes per measurement** (SQLite): the database file after a WAL checkpoint, indexes
  and rollups included, divided by the measurements stored.
- **Queries**: COUNT, SUM, MIN, MAX, MEAN, LATEST and UNIQUE by account and day over the
  whole data set, at 1,000,000 and 5,000,000 measurements, on SQLite and PostgreSQL; the
  best of 3 wall times each (the answers are the rollups', see ``ledger/answers.py``).

The data: 50 accounts over 30 days of November 2026, SDK-shaped uids (four writers,
sequential counters), ``measure`` calls (an integer) and seconds (a float with 3
decimals), ``what`` endpoint (8 values) and ``where`` region (4). Built in batches of
20,000 (a large batch builds faster; the rollups come out the same).

``.venv/bin/python bench/ledger.py [n ...]`` prints the figures as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meterkit_agent.ledger import Ledger, UsageQuery

ORG = "bench"
START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
SPAN_MS = 30 * 86_400_000
WRITERS = [f"{w:08x}-1a2b-8c3d-9e4f-" for w in (0x5EED0001, 0x5EED0002, 0x5EED0003, 0x5EED0004)]
ENDPOINTS = [f"/v1/{name}" for name in ("download", "upload", "list", "search", "auth", "export", "import", "stats")]
QUERIES = [
    ("COUNT", None),
    ("SUM", "seconds"),
    ("MIN", "seconds"),
    ("MAX", "seconds"),
    ("MEAN", "seconds"),
    ("LATEST", "seconds"),
    ("UNIQUE", "endpoint"),
]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def measurements(first: int, n: int, total: int, tag: int = 0, span_ms: int = SPAN_MS) -> list[dict[str, Any]]:
    """Measurements ``first`` .. ``first + n`` of ``total`` spread evenly over ``span_ms``."""
    out = []
    for i in range(first, first + n):
        ms = START_MS + i * span_ms // total
        out.append(
            {
                "uid": f"{WRITERS[i % 4][:-5]}{tag:04x}-{i // 4 + 1:012x}",
                "meter": "api_calls",
                "account": f"account-{(i * 7919) % 50:03d}",
                "ts": _iso(ms),
                "measure": {"calls": 1, "seconds": (i * 37 % 5000) / 1000},
                "what": {"endpoint": ENDPOINTS[i % 8]},
                "where": {"region": ("eu", "us", "ap", "sa")[i % 4]},
            }
        )
    return out


def ingest_cost(url: str, n: int = 200_000, batch: int = 1_000) -> dict[str, float]:
    """CPU and wall µs per measurement for ``n`` measurements in batches of ``batch``, as
    an agent delivers them: recent ones, over two hours (a batch spans under a minute)."""
    ledger = Ledger(url)
    try:
        chunks = [measurements(i, batch, n, tag=1, span_ms=2 * 3_600_000) for i in range(0, n, batch)]
        cpu, wall = time.process_time(), time.perf_counter()
        for chunk in chunks:
            ledger.ingest(ORG, chunk)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        ledger.close()
    return {"ingest_cpu_us": round(cpu / n * 1e6, 2), "ingest_wall_us": round(wall / n * 1e6, 2)}


def build(ledger: Ledger, have: int, total: int, batch: int = 20_000) -> float:
    """Add measurements ``have`` .. ``total`` of a data set of ``total`` spread evenly over
    the 30 days. Returns seconds."""
    start = time.perf_counter()
    for i in range(have, total, batch):
        ledger.ingest(ORG, measurements(i, min(batch, total - i), total, tag=2))
    return time.perf_counter() - start


def query_times(ledger: Ledger, repeat: int = 3) -> dict[str, float]:
    out = {}
    for aggregation, target in QUERIES:
        q = UsageQuery(meter="api_calls", aggregation=aggregation, target=target, bucket="day")
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            rows = ledger.usage(ORG, q)
            best = min(best, time.perf_counter() - start)
        assert len(rows) == 50 * 30, (aggregation, len(rows))
        out[f"{aggregation}_s"] = round(best, 4)
    return out


def bytes_per_measurement(ledger: Ledger, path: Path, n: int) -> float:
    conn = ledger.connection()
    try:
        conn.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return round(path.stat().st_size / n, 1)


def sizes_run(url: str, path: Path | None, sizes: list[int]) -> dict[str, Any]:
    """Queries at each size. Each size is its own data set (its 30 days evenly filled)."""
    out: dict[str, Any] = {}
    for n in sizes:
        ledger = Ledger(url)
        try:
            _wipe(ledger)
            built = build(ledger, 0, n)
            figures: dict[str, Any] = {"build_s": round(built, 1), **query_times(ledger)}
            if path is not None:
                figures["bytes_per_measurement"] = bytes_per_measurement(ledger, path, n)
            assert ledger.count(ORG) == n
            out[str(n)] = figures
        finally:
            ledger.close()
    return out


def _wipe(ledger: Ledger) -> None:
    """Start a size from nothing (the same database, so PostgreSQL's server is reused)."""
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        tables = ["measurements", "hours", "num_rollup", "str_rollup", "series", "orgs", "fields", "shapes"]
        if ledger.postgres:
            cur.execute("TRUNCATE " + ", ".join([*tables, "uids"]))
        else:
            cur.execute("BEGIN IMMEDIATE")
            for table in tables:
                cur.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        conn.commit()
    finally:
        conn.close()
    ledger.writer = type(ledger.writer)(ledger.postgres)  # its caches named rows just deleted


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from pgserver import PostgresUnavailable, postgres_server  # bench/pgserver.py (C4)
    except ImportError:
        yield None
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable:
        yield None


def run(sizes: tuple[int, ...] = (1_000_000, 5_000_000), postgres: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"sizes": list(sizes)}
    with tempfile.TemporaryDirectory(prefix="meterkit-bench-ledger-") as tmp:
        out["sqlite"] = ingest_cost(f"sqlite:///{Path(tmp) / 'ingest.db'}")
        path = Path(tmp) / "ledger.db"
        out["sqlite"]["queries"] = sizes_run(f"sqlite:///{path}", path, list(sizes))
    if postgres:
        with _postgres() as url:
            if url is None:
                out["postgresql"] = "skipped: no PostgreSQL server programs"
            else:
                out["postgresql"] = ingest_cost(url, n=100_000)
                out["postgresql"]["queries"] = sizes_run(url, None, list(sizes))
    out["took_s"] = round(time.perf_counter() - started, 1)
    return out


if __name__ == "__main__":
    given = tuple(int(a) for a in sys.argv[1:]) or (1_000_000, 5_000_000)
    print(json.dumps(run(given), indent=2))
