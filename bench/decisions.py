"""Limit decisions: what one costs, in this process, beside the `limits` and
`pyrate-limiter` libraries doing the same work. A section of ``make bench`` (``run()``),
or on its own:

    python bench/decisions.py [--n 100000] [--runs 5]

Each row decides N times for one account under a limit high enough that every decision
is allowed (the common case, and the same work for every library), and gives the wall
time and the process CPU time (every thread: ``time.process_time``) per decision, as the
median and range of the runs, and each peer's CPU as a multiple of meterkit's doing the
same kind of work (in memory: meterkit's process row; through Redis: its global row).

The Redis rows use a ``redis-server`` started here on a free 127.0.0.1 port (left out
when none is installed). Their cost is a round trip, so they are judged against one: a
bare PING from a client made by meterkit's own factory (``_redislimit.connect``), and the
requests the client sent per decision (counted in redis-py's ``send_packed_command``;
the server's command count would include the calls the script makes inside Redis).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(Path(__file__).resolve().parent)]

from redisserver import running_redis  # noqa: E402 # the bench's own helper, beside this file

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
#: A Redis row decides this much less often than a memory row: each is a round trip.
REDIS_SHARE = 20

Samples = tuple[list[float], list[float]]


def measure(decide: Callable[[], Any], n: int, runs: int) -> Samples:
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


def _configure(work: Path, redis_url: str | None) -> None:
    work.mkdir(parents=True, exist_ok=True)
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


def _forget_host_lock() -> None:
    """Unlink the host table's named semaphore: it would outlive the temporary table."""
    from meterkit import _allow

    table = getattr(getattr(_allow, "engine", None), "_host", None)
    if table is not None:
        table.sem.unlink()


def rows(n: int, runs: int, work: Path, redis_url: str | None) -> Iterator[tuple[str, Samples]]:
    import limits
    import pyrate_limiter as pyrate

    _configure(work, redis_url)
    allow = meterkit.allow
    try:
        for meter in ("process_calls", "host_calls", "capped_calls"):
            assert allow(meter, "acme").reason == "allowed", allow(meter, "acme")
            yield f"meterkit {meter.split('_')[0]}", measure(lambda m=meter: allow(m, "acme"), n, runs)
        if redis_url is not None:
            assert allow("global_calls", "acme").reason == "allowed"
            yield "meterkit global (Redis)", measure(lambda: allow("global_calls", "acme"), n // REDIS_SHARE, runs)
    finally:
        _forget_host_lock()
        meterkit.shutdown(5)
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
        yield "limits fixed window (Redis)", measure(lambda: hit(item, "acme"), n // REDIS_SHARE, runs)
    bucket = pyrate.InMemoryBucket([pyrate.Rate(1_000_000, pyrate.Duration.SECOND)])
    acquire = pyrate.Limiter(bucket).try_acquire
    yield "pyrate-limiter (memory)", measure(lambda: acquire("acme", blocking=False), n, runs)


@contextmanager
def requests_sent() -> Iterator[list[int]]:
    """Counts the requests redis-py sends (one each, then waits for the reply: a round trip)."""
    from redis.connection import AbstractConnection

    sent = [0]
    send = AbstractConnection.send_packed_command

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return send(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


def round_trip(redis_url: str, n: int, runs: int, work: Path) -> dict[str, Any]:
    """A global decision beside a bare PING from the same kind of client (meterkit's
    factory, its default 100 ms timeouts), run after run in turns so that both see the
    same load; and the requests the client sent per decision."""
    from meterkit._redislimit import connect

    client = connect(redis_url, 100)
    _configure(work, redis_url)
    try:
        allow = meterkit.allow
        allow("global_calls", "acme")  # loads the script: the NOSCRIPT round trip is not counted
        with requests_sent() as sent:
            for _ in range(n):
                allow("global_calls", "acme")
        pings, decisions = [], []
        for _ in range(runs):
            pings += measure(client.ping, n, 1)[0]
            decisions += measure(lambda: allow("global_calls", "acme"), n, 1)[0]
    finally:
        meterkit.shutdown(5)
    return {
        "ping_wall_us": round(statistics.median(pings), 2),
        "decision_wall_us": round(statistics.median(decisions), 2),
        "decision_x_ping": round(statistics.median(d / p for d, p in zip(decisions, pings, strict=True)), 2),
        "decision_x_ping_min": round(min(d / p for d, p in zip(decisions, pings, strict=True)), 2),
        "decision_x_ping_max": round(max(d / p for d, p in zip(decisions, pings, strict=True)), 2),
        "round_trips_per_decision": round(sent[0] / n, 3),
    }


def _figures(walls: list[float], cpus: list[float]) -> dict[str, float]:
    return {
        "wall_us": round(statistics.median(walls), 3),
        "wall_us_min": round(min(walls), 3),
        "wall_us_max": round(max(walls), 3),
        "cpu_us": round(statistics.median(cpus), 3),
        "cpu_us_min": round(min(cpus), 3),
        "cpu_us_max": round(max(cpus), 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The section's figures: per row, medians and ranges of wall and process CPU µs per
    decision, each peer's CPU as a multiple of meterkit's, and the Redis round trip."""
    n, runs = (20_000, 3) if quick else (100_000, 5)
    figures: dict[str, Any] = {"decisions_per_run": n, "runs": runs, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp, running_redis() as url:
        for name, (walls, cpus) in rows(n, runs, Path(tmp) / "rows", url):
            figures["rows"][name] = _figures(walls, cpus)
        if url is None:
            figures["redis"] = "no redis-server installed: the Redis rows are left out"
        else:
            figures["redis"] = round_trip(url, n // REDIS_SHARE, runs, Path(tmp) / "trip")
    table = figures["rows"]
    for name, row in table.items():
        if not name.startswith("meterkit"):
            mine = table.get("meterkit global (Redis)" if "Redis" in name else "meterkit process")
            if mine:
                row["cpu_x_meterkit"] = round(row["cpu_us"] / mine["cpu_us"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="decisions per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'decision':32} {'wall µs (median, range)':>28} {'CPU µs (median, range)':>28}")
    with tempfile.TemporaryDirectory() as tmp, running_redis() as url:
        for name, (walls, cpus) in rows(args.n, args.runs, Path(tmp) / "rows", url):
            print(
                f"{name:32} {statistics.median(walls):>10.2f} ({min(walls):.2f}-{max(walls):.2f})".ljust(61)
                + f" {statistics.median(cpus):>10.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
            )
        if url is None:
            print("(no redis-server installed: the Redis rows are left out)")
        else:
            trip = round_trip(url, args.n // REDIS_SHARE, args.runs, Path(tmp) / "trip")
            print(
                f"global decision {trip['decision_wall_us']:.0f} µs = {trip['decision_x_ping']:.2f}x a bare PING"
                f" ({trip['ping_wall_us']:.0f} µs); {trip['round_trips_per_decision']} round trips per decision"
            )


if __name__ == "__main__":
    main()
