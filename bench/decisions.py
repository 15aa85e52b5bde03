"""Limit decisions: what one costs, in this process, beside the `limits` and
`pyrate-limiter` libraries doing the same work.

    python bench/decisions.py [--n 100000] [--runs 5]

Each row decides N times for one account under a limit high enough that every decision
is allowed (the common case, and the same work for every library), and prints the wall
time and the process CPU time (every thread: ``time.process_time``) per decision, as the
median and range of the runs. The Redis rows start a ``redis-server`` on a free
127.0.0.1 port (skipped when none is installed); their cost is a round trip.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk")]

import meterkit  # noqa: E402 # after the path above, so the working tree's SDK is measured

PLANS = """\
plans:
  - code: bench
    limits:
      - {meter: process_calls, rate: 1000000, per: second, burst: 1000000, scope: process}
      - {meter: host_calls, rate: 1000000, per: second, burst: 1000000, scope: host}
      - {meter: global_calls, rate: 1000000, per: second, burst: 1000000, scope: global}
      - {meter: capped_calls, cap: 1000000000000, period: month, mode: hard, grace_percent: 5}
accounts:
  acme: [{plan: bench, from: "2020-01-01"}]
"""
RATE = "1000000/second"


def measure(decide: Callable[[], Any], n: int, runs: int) -> tuple[list[float], list[float]]:
    """Per-decision wall and CPU microseconds of each run."""
    walls, cpus = [], []
    for _ in range(n // 10):
        decide()  # warm up: the first decision builds routes, tables and connections
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            decide()
        walls.append((time.perf_counter() - wall) / n * 1e6)
        cpus.append((time.process_time() - cpu) / n * 1e6)
    return walls, cpus


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", work]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            for _ in range(500):
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2):
                        break
                except OSError:
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def rows(n: int, runs: int, work: Path, redis_url: str | None) -> Iterator[tuple[str, tuple[list[float], list[float]]]]:
    import limits
    import pyrate_limiter as pyrate

    plans = work / "plans.yaml"
    plans.write_text(PLANS)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (work / "balances.json").write_text(json.dumps({"as_of": now, "fetched_at": now, "balances": []}))
    meterkit.configure(
        spool_dir=work / "spool",
        plans=plans,
        limits_state_dir=work / "state",
        redis_url=redis_url,
        balances_path=work / "balances.json",
    )
    allow = meterkit.allow
    for meter in ("process_calls", "host_calls", "capped_calls"):
        assert allow(meter, "acme").reason == "allowed", allow(meter, "acme")
        yield f"meterkit {meter.split('_')[0]}", measure(lambda m=meter: allow(m, "acme"), n, runs)
    if redis_url is not None:
        assert allow("global_calls", "acme").reason == "allowed"
        yield "meterkit global (Redis)", measure(lambda: allow("global_calls", "acme"), max(n // 20, 100), runs)
    item = limits.parse(RATE)
    memory = limits.storage.MemoryStorage()
    for name, strategy in (
        ("moving window", limits.strategies.MovingWindowRateLimiter),
        ("fixed window", limits.strategies.FixedWindowRateLimiter),
    ):
        hit = strategy(memory).hit
        yield f"limits {name} (memory)", measure(lambda h=hit: h(item, "acme"), n, runs)
    if redis_url is not None:
        hit = limits.strategies.FixedWindowRateLimiter(limits.storage.storage_from_string(redis_url)).hit
        yield "limits fixed window (Redis)", measure(lambda: hit(item, "acme"), max(n // 20, 100), runs)
    bucket = pyrate.InMemoryBucket([pyrate.Rate(1_000_000, pyrate.Duration.SECOND)])
    acquire = pyrate.Limiter(bucket).try_acquire
    yield "pyrate-limiter (memory)", measure(lambda: acquire("acme", blocking=False), n, runs)
    meterkit.shutdown(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="decisions per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'decision':32} {'wall µs (median, range)':>28} {'CPU µs (median, range)':>28}")
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        for name, (walls, cpus) in rows(args.n, args.runs, Path(tmp), url):
            print(
                f"{name:32} {statistics.median(walls):>10.2f} ({min(walls):.2f}-{max(walls):.2f})".ljust(61)
                + f" {statistics.median(cpus):>10.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
            )
        if url is None:
            print("(no redis-server installed: the Redis rows are left out)")


if __name__ == "__main__":
    main()
