"""Every loss is visible, even on a full disk: a failed write leaves no torn or duplicated
frame, the loss counts reach the spool (the room kept for them, or first thing when
writing works again), and ``stats()`` counts what is held in memory meanwhile.

Two disks: a simulated one (the spool module's ``os`` sees a capacity, and takes part of a
write that does not fit, as a real filesystem does), and a real 1 MiB tmpfs when this
machine lets the test mount one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import meterkit
from meterkit import _sinks, _spool
from meterkit._spool import KIND_MEASUREMENT, NotDurable, SegmentWriter, encode_frame, read_segment, segments
from tests.conftest import small_tmpfs
from tests.sdk.helpers import losses, measurements_in, spooled


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


class Disk:
    """An ``os`` for the spool and sink modules whose disk holds ``capacity`` bytes of the
    files under ``root``. A write that does not fit is taken in part; the next one fails
    with ENOSPC, as a real filesystem does. ``fail_fsync`` makes the next fsyncs fail."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.fail_fsync = 0
        self.refused = 0
        self.on_partial: Callable[[], None] = lambda: None

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def free(self) -> int:
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity - used

    def write(self, fd: int, data: Any) -> int:
        room = self.free()
        if room <= 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if len(data) <= room:
            return os.write(fd, data)
        n = os.write(fd, data[:room])
        self.on_partial()
        return n

    def statvfs(self, path: Any) -> Any:
        return SimpleNamespace(f_blocks=self.capacity, f_bavail=max(self.free(), 0), f_frsize=1)

    def posix_fallocate(self, fd: int, offset: int, size: int) -> None:
        if self.free() < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.posix_fallocate(fd, offset, size)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            self.fail_fsync -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch, spool: Path) -> Disk:
    fake = Disk(spool, capacity=1 << 30)
    monkeypatch.setattr(_spool, "os", fake)
    monkeypatch.setattr(_sinks, "os", fake)
    return fake


def read_back(spool: Path) -> tuple[Counter[str], dict[str, int]]:
    """(uid counts of every measurement frame, loss counts by reason); no frame is torn or corrupt."""
    uids: Counter[str] = Counter()
    for seg in segments(spool):
        result = read_segment(seg)
        assert result.error is None and not result.corrupt and not result.torn, (seg, result)
        uids.update(m["uid"] for f in result.frames for m in measurements_in(f))
    return uids, losses(spool)


# -- the segment writer: all or nothing --------------------------------------------------


FRAMES = [encode_frame(KIND_MEASUREMENT, b'{"uid": "u%d", "pad": "%s"}' % (i, b"x" * 200)) for i in range(10)]


def all_uids(spool: Path) -> list[str]:
    return [f.json()["uid"] for seg in segments(spool) for f in read_segment(seg).frames]


def test_a_partial_write_is_cut_back_and_the_retry_writes_each_frame_once(disk: Disk, spool: Path) -> None:
    writer = SegmentWriter(spool, "test")
    writer.write(b"".join(FRAMES[:2]), 2)
    first = writer.path
    assert first is not None
    before = first.stat().st_size
    disk.capacity = before + 3 * len(FRAMES[0]) + 17  # three frames and a torn one fit
    with pytest.raises(OSError, match="No space"):
        writer.write(b"".join(FRAMES[2:]), 8)
    result = read_segment(first)
    assert [f.json()["uid"] for f in result.frames] == ["u0", "u1"]  # no torn frame, no half batch
    assert result.sealed  # and nothing more goes where those bytes were
    disk.capacity = 1 << 30
    writer.write(b"".join(FRAMES[2:]), 8)
    writer.seal()
    assert all_uids(spool) == [f"u{i}" for i in range(10)]
    assert all(not read_segment(seg).corrupt and read_segment(seg).sealed for seg in segments(spool))


def test_a_reader_that_saw_half_of_a_failed_write_misses_nothing(disk: Disk, spool: Path) -> None:
    writer = SegmentWriter(spool, "test")
    writer.write(FRAMES[0], 1)
    first = writer.path
    assert first is not None
    glimpses = []
    disk.on_partial = lambda: glimpses.append(read_segment(first))  # the agent polls just then
    disk.capacity = first.stat().st_size + 3 * len(FRAMES[0]) + 17
    with pytest.raises(OSError, match="No space"):
        writer.write(b"".join(FRAMES[1:]), 9)
    disk.capacity = 1 << 30
    writer.write(encode_frame(KIND_MEASUREMENT, b'{"uid": "other"}'), 1)  # e.g. loss counts go first
    writer.write(b"".join(FRAMES[1:]), 9)
    writer.seal()
    (glimpse,) = glimpses
    assert [f.json()["uid"] for f in glimpse.frames] == ["u0", "u1", "u2", "u3"]
    later = read_segment(first, glimpse.next_offset)  # the reader goes on from where it was
    assert not later.corrupt
    seen = [f.json()["uid"] for f in glimpse.frames + later.frames]
    seen += [f.json()["uid"] for seg in segments(spool) if seg != first for f in read_segment(seg).frames]
    assert set(seen) == {"other", *(f"u{i}" for i in range(10))}  # at worst seen twice, never missed
    assert all_uids(spool).count("u2") == 1  # the spool itself holds each frame once


def test_a_failed_fsync_keeps_the_written_frames_and_never_writes_them_again(
    disk: Disk, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = SegmentWriter(spool, "test", fsync=True)
    writer.write(FRAMES[0], 1)
    disk.fail_fsync = 1
    with pytest.raises(NotDurable):
        writer.write(FRAMES[1], 1)
    writer.seal()
    assert all_uids(spool) == ["u0", "u1"]

    client = meterkit.Client(spool_dir=spool / "client", fsync=True)
    disk.fail_fsync = 1
    for i in range(5):
        client.record("m", account="a", measure={"n": i})
    assert client.flush(5) and client.shutdown(5)
    assert sorted(m["measure"]["n"] for m in spooled(spool / "client")) == [0, 1, 2, 3, 4]
    assert client.stats()["lost"] == {}
    assert "may not survive a power loss" in caplog.text


def test_a_seal_that_does_not_fit_leaves_a_clean_unsealed_segment(disk: Disk, spool: Path) -> None:
    writer = SegmentWriter(spool, "test")
    writer.write(FRAMES[0], 1)
    path = writer.path
    assert path is not None
    disk.capacity = path.stat().st_size + 5
    with pytest.raises(OSError, match="No space"):
        writer.seal()
    result = read_segment(path)
    assert len(result.frames) == 1 and not result.sealed and not result.torn and not result.corrupt


def test_a_header_that_does_not_fit_leaves_no_segment(disk: Disk, spool: Path) -> None:
    writer = SegmentWriter(spool, "test")
    disk.capacity = 10
    with pytest.raises(OSError, match="No space"):
        writer.write(FRAMES[0], 1)
    assert segments(spool) == []


# -- the client on a full disk -----------------------------------------------------------


def fill(client: meterkit.Client, start: int, count: int) -> None:
    for i in range(start, start + count):
        client.record("m", account="acme", measure={"n": i}, other={"pad": "p" * 100})


@pytest.fixture
def client(spool: Path) -> Iterator[meterkit.Client]:
    c = meterkit.Client(
        spool_dir=spool, max_queue_size=200, max_batch_size=50, flush_interval_millis=10, queue_full_timeout_millis=0
    )
    yield c
    c.shutdown(5)


def used(spool: Path) -> int:
    return sum(p.stat().st_size for p in spool.rglob("*") if p.is_file())


def test_full_disk_every_measurement_is_spooled_once_or_counted_and_the_losses_land(
    disk: Disk, spool: Path, client: meterkit.Client
) -> None:
    fill(client, 0, 100)
    assert client.flush(5)
    written_before = client.stats()["written"]
    disk.capacity = used(spool) + 20_000  # the third batch of 50 fills the disk halfway through
    fill(client, 100, 150)
    wait_for(lambda: client.stats()["spool_refuses"] == "disk_full")
    fill(client, 250, 500)  # the queue holds 200: the rest is lost, counted under disk_full

    # While the disk is still full, the loss counts land in the room kept for them.
    wait_for(lambda: losses(spool).get("disk_full", 0) > 0)
    assert disk.free() < 64 * 1024  # the reserve's size: the batch still cannot be written
    stats = client.stats()
    assert stats["held"] == 50  # the refused batch, kept in memory and counted
    assert stats["written"] + stats["queued"] + stats["held"] + sum(stats["lost"].values()) == 750

    disk.capacity = 1 << 30  # space comes back
    fill(client, 750, 100)
    assert client.flush(10)
    assert client.shutdown(5)
    stats = client.stats()
    uids, reported = read_back(spool)
    assert max(uids.values()) == 1  # no frame written twice
    assert sum(uids.values()) == stats["written"] > written_before
    assert reported == stats["lost"] and stats["lost_unreported"] == 0  # every loss reached the spool
    assert stats["written"] + sum(stats["lost"].values()) == 850
    assert len(segments(spool)) <= 3, "a write cut short costs its segment, and only the first one is tried blind"
    assert (stats["queued"], stats["held"], stats["spool_refuses"]) == (0, 0, None)


def test_losses_are_written_at_shutdown_while_the_disk_is_still_full(disk: Disk, spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_queue_size=100, max_batch_size=50, queue_full_timeout_millis=0)
    fill(client, 0, 10)
    assert client.flush(5)
    disk.capacity = used(spool)  # not one byte more
    fill(client, 10, 300)
    assert not client.shutdown(0.5)
    stats = client.stats()
    assert sum(stats["lost"].values()) == 300 and stats["lost"]["disk_full"] >= 50 and stats["lost_unreported"] == 0
    uids, reported = read_back(spool)
    assert sum(uids.values()) == 10 and reported == stats["lost"]


def test_with_no_room_at_all_the_losses_wait_in_memory_and_go_first_when_space_returns(
    disk: Disk, spool: Path, client: meterkit.Client
) -> None:
    fill(client, 0, 10)
    assert client.flush(5)
    client.sink.reserve.release()  # type: ignore[attr-defined]  # someone else took the reserve's space too
    disk.capacity = 0
    fill(client, 10, 400)
    wait_for(lambda: client.stats()["lost_unreported"] > 0 and disk.refused > 2)
    assert losses(spool) == {}
    disk.capacity = 1 << 30
    wait_for(lambda: client.stats()["lost_unreported"] == 0)
    assert client.flush(5) and client.shutdown(5)
    frames = [f for seg in segments(spool) for f in read_segment(seg).frames]
    assert [m["measure"]["n"] for m in measurements_in(frames[0])] == list(range(10))
    assert frames[1].json()["type"] == "tally"
    assert frames[2].json()["type"] == "losses"  # written first when space returned, before the held batch
    assert measurements_in(frames[3])[0]["measure"]["n"] == 10
    stats = client.stats()
    uids, reported = read_back(spool)
    assert max(uids.values()) == 1 and reported == stats["lost"]
    assert stats["written"] + sum(stats["lost"].values()) == 410


def test_the_spool_budget_keeps_room_for_loss_records(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_spool_bytes=40_000, max_batch_size=20, queue_full_timeout_millis=0)
    for i in range(3_000):
        client.record("m", account="acme", measure={"n": i})
    client.shutdown(0.2)
    stats = client.stats()
    assert sum(s.stat().st_size for s in segments(spool)) <= 40_000
    assert losses(spool) == stats["lost"] and stats["lost"]["spool_full"] > 0
    assert stats["written"] + sum(stats["lost"].values()) == 3_000


class RefusingSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        self.calls += 1
        raise _sinks.SinkUnavailable("disk_full", "no space left")

    def reject(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def test_a_refusing_spool_is_retried_with_backoff_not_in_a_loop(spool: Path) -> None:
    sink = RefusingSink()
    client = meterkit.Client(
        spool_dir=spool, sink=sink, max_queue_size=100, max_batch_size=10, queue_full_timeout_millis=0
    )
    for i in range(500):  # the queue stays full: no reason to skip the backoff
        client.record("m", account="a", measure={"n": i})
    wait_for(lambda: sink.calls > 0)
    started, calls = time.monotonic(), sink.calls
    assert not client.flush(0.5)
    # Backoff doubles from 50 ms, so about 5 calls in half a second (two per write: losses
    # first, then the batch), and a flush adds one. A spin would make thousands.
    assert sink.calls - calls < 30, sink.calls - calls
    assert time.monotonic() - started < 2
    client.shutdown(0.2)
    stats = client.stats()
    assert sum(stats["lost"].values()) == 500 and stats["lost_unreported"] == 500  # counted, in memory only


def test_a_reserve_left_by_a_process_that_has_gone_is_swept(spool: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = spool / "reserve"
    folder.mkdir(parents=True)
    stale = folder / f"{_sinks._HOST}-{dead.pid}-deadbeef.reserve"
    stale.write_bytes(b"\0" * 1024)
    client = meterkit.Client(spool_dir=spool)
    client.record("m", account="a", measure={"n": 1})
    assert client.flush(5)
    assert not stale.exists()
    assert [p.name for p in folder.iterdir()] == [client.sink.reserve.path.name]  # type: ignore[attr-defined]
    client.shutdown(5)
    assert list(folder.iterdir()) == []  # given back at shutdown


# -- a real full disk --------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tmpfs", "1m", "the simulated disk above covers the same ground") as mount:
        yield mount


def test_a_real_full_tmpfs(tmpfs: Path) -> None:
    spool = tmpfs / "spool"
    client = meterkit.Client(
        spool_dir=spool, max_queue_size=200, max_batch_size=50, flush_interval_millis=10, queue_full_timeout_millis=0
    )
    try:
        filler = tmpfs / "filler"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (1024 * 1024 - 200 * 1024))  # leaves about 200 KiB for the spool
        recorded, flushed = 0, True
        while flushed:  # until a flush cannot finish: the disk is full
            fill(client, recorded, 100)
            recorded += 100
            flushed = client.flush(0.5)
            assert recorded < 5_000
        wait_for(lambda: client.stats()["spool_refuses"] == "disk_full")
        fill(client, recorded, 500)
        wait_for(lambda: losses(spool).get("disk_full", 0) > 0)  # through the reserve, disk still full
        filler.unlink()
        fill(client, recorded + 500, 100)
        recorded += 600
        assert client.flush(10)
    finally:
        assert client.shutdown(5)
    stats = client.stats()
    uids, reported = read_back(spool)
    assert max(uids.values()) == 1 and sum(uids.values()) == stats["written"]
    assert reported == stats["lost"] and stats["lost_unreported"] == 0
    assert stats["written"] + sum(stats["lost"].values()) == recorded
    assert len(segments(spool)) <= 3


def test_a_refused_record_orjson_cannot_encode_is_still_kept_and_its_batch_delivered(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    client = meterkit.Client(spool_dir=spool, flush_interval_millis=10)
    client.record("m", account="a", measure={"n": 1})
    client.record("m", account="a", measure={"n": 2**70})  # past 64 bits: refused, counted
    client.record("m", account="a", who={"user": "\ud800"})  # a lone surrogate: refused, counted
    client.record("m", account="a", measure={"n": 3})
    assert client.shutdown(10)
    assert sorted(m["measure"]["n"] for m in spooled(spool)) == [1, 3]
    assert sum(client.stats()["lost"].values()) == 2
    kept = [json.loads(line) for f in (spool / "rejected").glob("*.jsonl") for line in f.open()]
    by_reason = {k["reason"]: k["record"] for k in kept}
    assert set(by_reason) == {"number_out_of_range", "invalid_unicode"}
    assert by_reason["number_out_of_range"]["measure"]["n"] == 2**70  # kept exactly, as it was refused
    assert by_reason["invalid_unicode"]["who"]["user"] == "\ud800"
