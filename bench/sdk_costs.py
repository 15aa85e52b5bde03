"""meterkit's own figures beside the peer table (the issue's first target): ``record()`` in a
tight loop with the flusher running, what the ``@meterkit.meter`` decorator adds to a call,
and a burst of a million ``record()`` calls at the default settings, spooled. Each runs in a
fresh process (``python bench/sdk_costs.py <loop|decorator|burst> '<json spec>'`` prints one
JSON line), so that its memory and CPU are its own.

Both write to a spool no agent reads: they measure the application's side alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import peak_rss_kib

HERE = Path(__file__).resolve().parent


def _per_call_wall(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def decorator(spec: dict[str, Any]) -> dict[str, Any]:
    """Wall time of a decorated no-op beside the bare no-op, best of 3 each, interleaved;
    the flusher runs meanwhile, as it does in an application."""
    import meterkit

    meterkit.configure(catalog=spec["catalog"], spool_dir=spec["spool"])

    def bare() -> None:
        pass

    decorated = meterkit.meter("api_calls", account="acme", measure={"calls": 1})(bare)
    n = spec["n"]
    _per_call_wall(decorated, 2_000)
    walls: dict[str, list[float]] = {"decorated": [], "bare": []}
    for _ in range(3):
        walls["decorated"].append(_per_call_wall(decorated, n))
        walls["bare"].append(_per_call_wall(bare, n))
        meterkit.flush(60)
    meterkit.shutdown(60)
    best = {name: min(values) * 1e6 for name, values in walls.items()}
    return {"n": n, "decorated_us": best["decorated"], "bare_us": best["bare"]} | {
        "overhead_us": best["decorated"] - best["bare"]
    }


def loop(spec: dict[str, Any]) -> dict[str, Any]:
    """record() in a tight loop while the flusher runs (and no agent competes for the cores):
    wall and calling-thread CPU per call, and the whole process's CPU until flushed; three
    rounds, best and median."""
    import meterkit

    meterkit.configure(catalog=spec["catalog"], spool_dir=spec["spool"])
    record, n = meterkit.record, spec["n"]
    for _ in range(2_000):
        record("api_calls", account="warmup", measure={"calls": 1})
    meterkit.flush(60)
    rounds: dict[str, list[float]] = {"wall_us": [], "caller_cpu_us": [], "process_cpu_us": []}
    for _ in range(3):
        cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        for _ in range(n):
            record("api_calls", account="acme", measure={"calls": 1})
        rounds["wall_us"].append((time.perf_counter() - wall0) / n * 1e6)
        rounds["caller_cpu_us"].append((time.thread_time() - thread0) / n * 1e6)
        meterkit.flush(120)
        rounds["process_cpu_us"].append((time.process_time() - cpu0) / n * 1e6)
    meterkit.shutdown(60)
    figures: dict[str, Any] = {"n": n}
    for name, values in rounds.items():
        figures[f"{name}_best"] = min(values)
        figures[f"{name}_median"] = sorted(values)[1]
    return figures


def _spooled(directory: str) -> int:
    """Measurements in the spool, whether framed one by one or in batch frames (format 2)."""
    from meterkit import _spool

    batch_kind = getattr(_spool, "KIND_BATCH", None)
    count = 0
    for _, frame in _spool.iter_records(directory):
        if frame.kind == _spool.KIND_MEASUREMENT:
            count += 1
        elif frame.kind == batch_kind:
            from meterkit._frames import batch_records  # type: ignore[import-not-found,unused-ignore]

            count += len(batch_records(frame.payload))
    return count


def burst(spec: dict[str, Any]) -> dict[str, Any]:
    """``n`` record() calls as fast as one thread makes them, default settings, then shutdown.

    Every 1,000 calls the queue's depth is read (``stats()["queued"]``) and the thousand's
    wall time noted. ``record()`` waits for room only when the queue is full, so a peak
    depth more than 1,000 below its capacity shows it never did: it could not have filled
    between two readings."""
    import meterkit

    client = meterkit.configure(catalog=spec["catalog"], spool_dir=spec["spool"])
    record, n, chunk = meterkit.record, spec["n"] // 1_000 * 1_000, 1_000
    stats = client.stats
    before = peak_rss_kib()
    slowest, deepest = 0.0, 0
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in range(n // chunk):
        t = time.perf_counter()
        for _ in range(chunk):
            record("api_calls", account="acme", measure={"calls": 1})
        slowest = max(slowest, time.perf_counter() - t)
        deepest = max(deepest, stats()["queued"])
    recorded = time.perf_counter() - start
    meterkit.shutdown(600)
    spooled_s, cpu = time.perf_counter() - start, time.process_time() - cpu0
    peak = peak_rss_kib()
    lost = client.stats()["lost"]
    return {
        "n": n,
        "recorded_s": recorded,
        "spooled_s": spooled_s,
        "process_cpu_us_per_event": cpu / n * 1e6,
        "slowest_1000_calls_ms": slowest * 1e3,
        "queue_peak": deepest,
        "queue_capacity": client.settings.max_queue_size,
        "spooled": _spooled(spec["spool"]),
        "lost": sum(lost.values()),
        "lost_by_reason": lost,
        "rss_growth_mib": (peak - before) / 1024,
        "peak_rss_mib": peak / 1024,
    }


def _in_child(mode: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "sdk_costs.py"), mode, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(catalog: str, quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dec = {"catalog": catalog, "spool": f"{tmp}/decorator", "n": 10_000 if quick else 50_000}
        big = {"catalog": catalog, "spool": f"{tmp}/burst", "n": 200_000 if quick else 1_000_000}
        tight = {"catalog": catalog, "spool": f"{tmp}/loop", "n": 20_000 if quick else 100_000}
        return {
            "loop": _in_child("loop", tight, 300),
            "decorator": _in_child("decorator", dec, 300),
            "burst": _in_child("burst", big, 900),
        }


if __name__ == "__main__":
    mode, given = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"loop": loop, "decorator": decorator, "burst": burst}[mode](given)), flush=True)
