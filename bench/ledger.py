"""What a durable acknowledgement costs: the ledger's SQLite ingest with
``synchronous=FULL`` (every commit fsynced before the ledger answers: the default, so an
acknowledged measurement survives power loss) beside ``synchronous=NORMAL`` (what it ran
before), in requests of 1,000 measurements as the agent sends them."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from meterkit_agent.ledger import Ledger

BATCH = 1_000


def _measurements(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "uid": f"{tag}-{i}",
            "meter": "api_calls",
            "account": f"acct-{i % 50}",
            "ts": f"2026-11-01T{i % 24:02d}:00:00.000Z",
            "measure": {"calls": 1, "seconds": 0.25},
            "what": {"endpoint": "/download"},
        }
        for i in range(n)
    ]


def _ingest(ledger: Ledger, records: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        ledger.ingest("bench", records[i : i + BATCH])
    return time.perf_counter() - start


def run(n: int = 100_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        full = Ledger(f"sqlite:///{Path(tmp) / 'full.db'}")
        full_s = _ingest(full, _measurements(n, "f"))
        full.close()

        normal = Ledger(f"sqlite:///{Path(tmp) / 'normal.db'}")

        @sa.event.listens_for(normal.engine, "connect")
        def _normal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        normal.engine.dispose()  # new connections take the listener
        normal_s = _ingest(normal, _measurements(n, "n"))
        normal.close()
    return {
        "n": n,
        "batch": BATCH,
        "full_us_per_measurement": round(full_s / n * 1e6, 2),
        "normal_us_per_measurement": round(normal_s / n * 1e6, 2),
        "full_per_s": round(n / full_s),
        "normal_per_s": round(n / normal_s),
    }


if __name__ == "__main__":
    print(run())
