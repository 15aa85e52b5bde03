"""The spool tailer on real segment files: a damaged header costs only its own bytes, and a
segment left empty, header-only or headless by a writer that is gone is retired and
reported, while one a live writer is creating right now is never touched."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit._frames import batch_records
from meterkit._spool import KIND_BATCH, KIND_MEASUREMENT, encode_frame, encode_header, read_segment, segments
from meterkit_agent.receivers.spool import Envelope, SpoolReceiver
from tests.agent.conftest import wait_for


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def name(pid: int, seq: int = 1) -> str:
    return f"{int(time.time() * 1000):013d}-{pid}-deadbeef-{seq:05d}.mks"


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def header(pid: int) -> bytes:
    return encode_header({"format": 1, "writer": "deadbeef", "pid": pid, "host": socket.gethostname(), "segment": 1})


def sdk_segment(spool: Path, n: int) -> Path:
    """A sealed segment written by the SDK itself, with ``n`` measurements."""
    client = meterkit.Client(spool_dir=spool, flush_interval_millis=10)
    for i in range(n):
        client.record("data_downloaded", account="acme", measure={"bytes": i})
    assert client.shutdown(10)
    [path] = segments(spool)
    return path


def damage_header(path: Path) -> int:
    """Flip a byte inside the header's metadata; returns the header's length."""
    first = read_segment(path).frames[0].offset
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    return first


def measurements(env: Envelope) -> int:
    """How many measurements a frame carries (a batch frame, the SDK's: many)."""
    if env.kind == KIND_BATCH:
        return len(batch_records(env.payload))
    return 1 if env.kind == KIND_MEASUREMENT else 0


class Tail:
    """A receiver over a directory, with its emitted frames, corrupt bytes and abandonments."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.emitted: list[Envelope] = []
        self.corrupt: list[int] = []
        self.abandoned: list[tuple[str, str]] = []
        self.acked: dict[str, int] = {}
        self.receiver = SpoolReceiver(
            directory,
            lambda key: self.acked.get(key, 0),
            self._emit,
            on_corrupt=lambda _key, n: self.corrupt.append(n),
            on_abandoned=lambda key, reason: self.abandoned.append((key.rsplit("/", 1)[1], reason)),
            **kwargs,
        )

    def _emit(self, env: Envelope) -> bool:
        self.emitted.append(env)
        self.acked[env.source] = env.end  # acknowledged at once
        return True

    def retirable(self) -> set[str]:
        return {s.path.name for s in self.receiver.retirable()}


def test_frames_after_a_damaged_header_are_delivered_and_the_damage_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sdk_segment(tmp_path, 20)
    header_len = damage_header(path)
    tail = Tail(tmp_path)
    with caplog.at_level(logging.WARNING, "meterkit.agent"):
        tail.receiver.poll()
    assert sum(measurements(e) for e in tail.emitted) == 20
    assert tail.corrupt == [header_len]
    assert {e.validated for e in tail.emitted} == {None}  # who validated them is unknown: check again
    assert f"{os.getpid()}@?" in {e.writer for e in tail.emitted}
    assert path.name in caplog.text and "corrupt segment header (CRC mismatch)" in caplog.text
    assert tail.retirable() == {path.name}  # sealed: done, as any other
    assert tail.abandoned == []


def test_an_unsealed_segment_with_a_damaged_header_waits_for_a_live_writer_and_not_for_a_dead_one(
    tmp_path: Path,
) -> None:
    data = header(os.getpid()) + b"".join(encode_frame(KIND_MEASUREMENT, b'{"uid":"u%d"}' % i) for i in range(3))
    damaged = bytearray(data)
    damaged[25] ^= 0xFF
    live = tmp_path / name(os.getpid(), 1)
    live.write_bytes(bytes(damaged))
    age(live, 3600)
    tail = Tail(tmp_path, new_segment_grace=1)
    tail.receiver.poll()
    tail.receiver.poll()
    assert len(tail.emitted) == 3 and tail.retirable() == set()  # its writer, by name, still runs
    with live.open("ab") as f:  # and it goes on writing
        f.write(encode_frame(KIND_MEASUREMENT, b'{"uid":"u3"}'))
    tail.receiver.poll()
    assert len(tail.emitted) == 4

    gone = tmp_path / name(dead_pid(), 2)
    gone.write_bytes(bytes(damaged))
    age(gone, 60)
    tail.receiver.poll()
    tail.receiver.poll()
    assert gone.name in tail.retirable()
    assert tail.abandoned == []  # every frame was read: nothing to report beyond the header


def test_a_segment_being_created_right_now_is_never_retired(tmp_path: Path) -> None:
    mine = tmp_path / name(os.getpid(), 1)  # a live writer, between creating the file and its header
    mine.touch()
    fresh_but_dead = tmp_path / name(dead_pid(), 2)  # a dead pid by its name, but just now made
    fresh_but_dead.touch()
    tail = Tail(tmp_path)
    for _ in range(3):
        tail.receiver.poll()
    assert tail.retirable() == set() and tail.abandoned == []


HEADER = header(4_000_000)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (HEADER[:20], "incomplete_header"),
        (bytes([*HEADER[:-1], HEADER[-1] ^ 0xFF]), "corrupt_header"),  # its CRC
    ],
)
def test_a_headless_segment_of_a_dead_writer_is_retired_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    path = tmp_path / name(dead_pid())
    path.write_bytes(content)
    age(path, 60)
    tail = Tail(tmp_path)
    with caplog.at_level(logging.WARNING, "meterkit.agent"):
        tail.receiver.poll()
    assert tail.retirable() == {path.name}
    assert tail.abandoned == [(path.name, reason)]
    assert path.name in caplog.text and "is abandoned" in caplog.text
    assert tail.corrupt == ([len(content)] if reason == "corrupt_header" else [])


def test_an_empty_segment_is_abandoned_after_the_timeout_whatever_its_name_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reused = tmp_path / name(os.getpid())  # its pid is alive: reused, or an unrelated process
    reused.touch()
    age(reused, 50)
    tail = Tail(tmp_path, empty_segment_timeout=100)
    tail.receiver.poll()
    assert tail.abandoned == []
    age(reused, 120)
    with caplog.at_level(logging.WARNING, "meterkit.agent"):
        tail.receiver.poll()
    assert tail.abandoned == [(reused.name, "empty")]
    assert "nothing has written to it for 120 s" in caplog.text


def test_a_header_only_segment_of_a_dead_writer_is_retired_and_reported(tmp_path: Path) -> None:
    path = tmp_path / name(dead_pid())
    path.write_bytes(header(dead_pid()))
    tail = Tail(tmp_path)
    tail.receiver.poll()
    assert tail.retirable() == {path.name}
    assert tail.abandoned == [(path.name, "header_only")]


def test_a_header_only_segment_of_a_live_writer_waits(tmp_path: Path) -> None:
    path = tmp_path / name(os.getpid())
    path.write_bytes(header(os.getpid()))
    age(path, 3600)
    tail = Tail(tmp_path)
    tail.receiver.poll()
    assert tail.retirable() == set() and tail.abandoned == []


def test_a_real_agent_salvages_retires_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from meterkit_agent.agent import Agent
    from meterkit_agent.config import simple_config
    from meterkit_agent.pipeline.telemetry import read_status

    spool = tmp_path / "spool"
    damaged = sdk_segment(spool, 30)
    header_len = damage_header(damaged)
    empty = spool / name(dead_pid(), 1)
    empty.touch()
    age(empty, 60)
    header_only = spool / name(dead_pid(), 2)
    header_only.write_bytes(header(dead_pid()))
    state = tmp_path / "state"
    db = tmp_path / "ledger.db"
    agent = Agent(simple_config(spool_dir=spool, state_dir=state, ledger_db=f"sqlite:///{db}"))

    def delivered() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM measurements").fetchone()[0])

    with caplog.at_level(logging.WARNING, "meterkit.agent"):
        agent.start()
        try:
            wait_for(lambda: db.exists() and delivered() == 30, what="the salvaged frames delivered")
            wait_for(lambda: segments(spool) == [], what="every segment retired")
        finally:
            assert agent.stop(10)
    assert f"{empty.name} is abandoned: it is empty" in caplog.text
    assert f"{header_only.name} is abandoned: it holds a header and no frame" in caplog.text
    assert "corrupt segment header (CRC mismatch)" in caplog.text

    status = read_status(state)
    assert status is not None
    abandoned = {p["attributes"]["reason"]: p["value"] for p in status["metrics"]["meterkit.agent.segments_abandoned"]}
    assert abandoned == {"empty": 1, "header_only": 1}
    assert sum(p["value"] for p in status["metrics"]["meterkit.agent.corrupt_bytes"]) == header_len
