"""Fork, exit, back-pressure and durability: where metering clients usually lose events."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import meterkit
from meterkit._sinks import SinkUnavailable
from meterkit._spool import read_segment, segments
from tests.sdk.helpers import controls, losses, spooled


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_short_lived_process_loses_nothing_without_an_explicit_flush(spool: Path) -> None:
    done = run_python(
        f"""
        import meterkit
        meterkit.configure(spool_dir={str(spool)!r}, flush_interval_millis=60000)
        for i in range(2500):
            meterkit.record("m", account="a", measure={{"n": i}})
        """
    )
    assert done.returncode == 0, done.stderr
    assert len(spooled(spool)) == 2500
    assert all(read_segment(s).sealed for s in segments(spool))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_prefork_child_gets_its_own_buffer_thread_and_segments(spool: Path) -> None:
    """gunicorn --preload: configure in the parent, fork workers, record in both."""
    meterkit.configure(spool_dir=spool)
    meterkit.record("m", account="parent", measure={"n": 0})  # queued, not yet flushed
    children = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                for i in range(1000):
                    meterkit.record("m", account=f"child{worker}", measure={"n": i})
                code = 0 if meterkit.shutdown(10) else 2
            finally:
                os._exit(code)
        children.append(pid)
    meterkit.record("m", account="parent", measure={"n": 1})
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert meterkit.shutdown(10)
    records = spooled(spool)
    by_account: dict[str, int] = {}
    for r in records:
        by_account[r["account"]] = by_account.get(r["account"], 0) + 1
    assert by_account == {"parent": 2, "child0": 1000, "child1": 1000}  # the parent's queue was not copied
    assert len({r["uid"] for r in records}) == len(records)
    prefixes = {r["uid"][:24] for r in records}
    assert len(prefixes) == 3  # each process has its own uid prefix
    pids = {read_segment(s).header["pid"] for s in segments(spool)}  # type: ignore[index]
    assert len(pids) == 3


class FlakySink:
    """A sink that refuses writes until told otherwise: a full or broken disk."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.broken = True
        self.records: list[dict[str, object]] = []
        self.controls: list[dict[str, object]] = []

    def write(self, records: list[dict[str, object]], controls: list[dict[str, object]]) -> None:
        if self.broken:
            raise SinkUnavailable(self.reason, "disk says no")
        self.records.extend(records)
        self.controls.extend(controls)

    def reject(self, entry: dict[str, object]) -> None:
        pass

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def test_full_buffer_blocks_then_drops_newest_and_counts_every_drop(tmp_path: Path) -> None:
    sink = FlakySink("spool_unwritable")
    client = meterkit.Client(
        spool_dir=tmp_path, sink=sink, max_queue_size=100, max_batch_size=10, queue_full_timeout_millis=2
    )
    started = time.monotonic()
    for i in range(300):
        client.record("m", account="a", measure={"n": i})
    assert time.monotonic() - started < 10
    # Mostly `spool_unwritable`; a drop made before the flusher first tried the sink (a busy
    # machine can delay its first write past the queue filling) is `queue_full`: every drop
    # is counted, under the reason known when it was made.
    losses = client.stats()["lost"]
    assert set(losses) <= {"spool_unwritable", "queue_full"}, losses
    lost = sum(losses.values())
    assert losses.get("spool_unwritable", 0) >= lost - 10
    assert 150 <= lost <= 200  # the queue (100) and one pending batch (10) are kept
    sink.broken = False
    assert client.flush(10)
    kept = sorted(r["measure"]["n"] for r in sink.records)  # type: ignore[index]
    assert len(kept) + lost == 300
    # The newest are dropped, the oldest kept: the first 100 filled the empty queue; after
    # them, one may be dropped and a later one kept when the flusher made room in between.
    assert kept[:100] == list(range(100)) and len(set(kept)) == len(kept)
    reported = sum(e["count"] for c in sink.controls if c["type"] == "losses" for e in c["entries"])  # type: ignore[attr-defined,union-attr]
    assert reported == lost  # the drops travel to the agent as control records
    client.shutdown(5)


def test_spool_size_limit(spool: Path) -> None:
    client = meterkit.Client(
        spool_dir=spool, max_spool_bytes=20_000, max_queue_size=2000, max_batch_size=10, queue_full_timeout_millis=0
    )
    for i in range(1000):
        client.record("m", account="a", measure={"n": i})
    client.shutdown(0.5)
    assert sum(s.stat().st_size for s in segments(spool)) <= 20_000
    stats = client.stats()
    assert "spool_full" in stats["lost"]
    assert stats["written"] + sum(stats["lost"].values()) == 1000  # every measurement accounted for


def test_burst_larger_than_the_buffer_loses_nothing_when_the_disk_keeps_up(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_queue_size=2_000, max_batch_size=500)
    for i in range(100_000):
        client.record("m", account="a", measure={"n": i})
    assert client.shutdown(30)
    assert client.stats()["lost"] == {}
    assert len(spooled(spool)) == 100_000


def test_sync_durability_writes_before_record_returns(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, durability="sync", flush_interval_millis=60_000)
    client.record("m", account="a", measure={"n": 1})
    assert [m["measure"] for m in spooled(spool)] == [{"n": 1}]  # no flush needed
    client.shutdown(5)


def test_tallies_count_what_was_written(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    for i in range(10):
        client.record("m", account="a" if i % 2 else "b", measure={"n": i}, cost={"usd": 0.5})
    client.shutdown(5)
    entries = [e for c in controls(spool, "tally") for e in c["entries"]]
    by_account = {e["account"]: e for e in entries}
    assert by_account["a"]["count"] == 5 and by_account["a"]["sums"] == {"measure.n": 25, "cost.usd": 2.5}
    assert by_account["b"]["count"] == 5 and by_account["b"]["sums"] == {"measure.n": 20, "cost.usd": 2.5}
    assert losses(spool) == {}
