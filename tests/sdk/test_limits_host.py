"""Host-shared rate limits: four real processes on one limit hold it within one unit; the
table's lock is private, and taken over exactly once from a holder that died inside it."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import meterkit
from meterkit import _hostshare as hostshare
from meterkit._hostshare import HEADER_BYTES, HostTable, key_hash

from .limits_helpers import ROOT, results, start_hammers, write_plans


@pytest.mark.serial  # "the limit is reached" needs the four to get the CPU they ask for
def test_four_processes_share_one_host_limit(tmp_path: Path) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 200, per: second, burst: 50}")
    procs = start_hammers(4, str(plans), str(tmp_path / "state"), str(tmp_path / "spool"), "1.5")
    total, first, last = results(procs)
    elapsed = (last - first) / 1e9
    bound = 50 + 200 * elapsed + 1
    assert total <= bound, (total, bound)
    # and the limit is reached, not merely respected by refusing everything
    assert total >= 50 + 200 * elapsed * 0.5, (total, bound)


def test_a_process_in_the_same_table_sees_another_ones_use(tmp_path: Path) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 1, per: hour, burst: 3}")
    procs = start_hammers(1, str(plans), str(tmp_path / "state"), str(tmp_path / "spool"), "0.2")
    assert results(procs)[0] == 3
    meterkit.configure(spool_dir=tmp_path / "spool", plans=plans, limits_state_dir=tmp_path / "state")
    decision = meterkit.allow("api_calls", account="acme")
    assert not decision.allowed and decision.reason == "rate limited" and decision.retry_after > 3000


def test_the_table_is_private_and_reused_slots_are_expired_ones(tmp_path: Path) -> None:
    table = HostTable(tmp_path / "state", slots=4)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert table.path.stat().st_mode & 0o777 == 0o600
    table.acquire()
    try:
        offsets = {table.find(key_hash(f"k{i}"), now_ns=100) for i in range(4)}
        assert len(offsets) == 4
        assert table.find(key_hash("k0"), now_ns=100) in offsets  # found again, not claimed twice
    finally:
        table.release()


# -- the lock's recovery from a holder that died ----------------------------------------------

#: A child on the table in ``argv[1]``: "named" takes the lock as every decision does and
#: "unnamed" takes only the semaphore (as if it died before writing its name), then both
#: sleep; "waiter" takes it ``argv[3]`` times (opening the table takes it once more), each
#: time adding 1 to a counter in slot 0 in two unsynchronised steps, so two processes
#: inside at once would lose increments, and prints how often it took the lock over.
#: Each prints "ready" first (a waiter before it opens the table: that already waits).
CHILD = """
import os, struct, sys, time
from pathlib import Path
from meterkit._hostshare import HEADER_BYTES, HostTable
state, what = Path(sys.argv[1]), sys.argv[2]
counter = struct.Struct("<q")
if what == "waiter":
    print("ready", flush=True)
    table = HostTable(state, slots=4)
    for _ in range(int(sys.argv[3])):
        table.acquire()
        value = counter.unpack_from(table.mm, HEADER_BYTES)[0]
        os.sched_yield()
        counter.pack_into(table.mm, HEADER_BYTES, value + 1)
        table.release()
    print(table.recovered, flush=True)
else:
    table = HostTable(state, slots=4)
    table.acquire() if what == "named" else table.sem.acquire()
    print("ready", flush=True)
    time.sleep(600)
"""


def start_child(started: list[subprocess.Popen[str]], state: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # none left behind, whatever failed
        proc.kill()
        proc.wait()


@pytest.fixture
def table(tmp_path: Path) -> Iterator[HostTable]:
    made = HostTable(tmp_path / "state", slots=4)
    yield made
    made.sem.unlink()  # named semaphores outlive their processes: leave none behind


def test_the_semaphore_is_private_to_this_user(table: HostTable) -> None:
    found = Path("/dev/shm") / f"sem.{table.sem.name.lstrip('/')}"
    if found.exists():  # glibc's place for it
        assert found.stat().st_mode & 0o777 == 0o600 and found.stat().st_uid == os.getuid()
    assert str(os.getuid()) in table.sem.name


def test_a_holder_killed_inside_the_lock_is_taken_over_once_even_as_a_zombie(
    table: HostTable, children: list[subprocess.Popen[str]]
) -> None:
    state = table.path.parent
    holder = start_child(children, state, "named")
    waiters = [start_child(children, state, "waiter", "200") for _ in range(3)]
    holder.kill()  # not waited for yet: a zombie, whose pid still exists
    table.acquire()  # a fourth waiter, in this process
    table.release()
    outputs = [w.communicate(timeout=60)[0] for w in waiters]
    holder.wait()
    assert all(w.returncode == 0 for w in waiters), outputs
    # exactly one of the four took the lock over, and no increment was lost: never two inside
    assert table.recovered + sum(int(out) for out in outputs) == 1
    assert struct.unpack_from("<q", table.mm, HEADER_BYTES)[0] == 600


def test_a_holder_killed_before_writing_its_name_is_taken_over_after_a_quiet_while(
    table: HostTable, children: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostshare, "NOBODY_SECONDS", 0.2)
    holder = start_child(children, table.path.parent, "unnamed")
    holder.kill()
    holder.wait()
    table.acquire()
    table.release()
    assert table.recovered == 1


def test_a_live_holder_is_waited_for_not_taken_over(table: HostTable, children: list[subprocess.Popen[str]]) -> None:
    start_child(children, table.path.parent, "named")
    # named and alive: never taken over, however long it is held
    assert table._take_over(None) == (False, None)
    assert table._take_over((0, 0.0)) == (False, None)
