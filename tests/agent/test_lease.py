"""The standby agent's lease with real processes: a second leader is refused, a standby
takes over from a leader that is killed, stopped or stops cleanly, and a stale leader is
fenced before it sends again and cannot commit. Take-over latencies are printed, not
asserted (timing belongs to the scratch benchmarks)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterkit_agent.lease import AgentRunning, Fenced, Lease, read_lease, running_pid

from .conftest import wait_for

CHILD = Path(__file__).with_name("lease_child.py")
TTL = 1.0


class Child:
    """One ``lease_child.py`` process; its stdout lines collected by a thread."""

    def __init__(self, state: Path) -> None:
        args = [str(state), str(state / "sends.log"), str(state / "commits.log"), str(TTL)]
        self.proc = subprocess.Popen(  # our own script, fixed arguments
            [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    def wait_said(self, prefix: str, timeout: float = 15.0) -> str:
        wait_for(lambda: self.said(prefix) is not None, timeout, f"{prefix!r} from pid {self.proc.pid}: {self.lines}")
        line = self.said(prefix)
        assert line is not None
        return line

    def signal(self, signum: int) -> float:
        at = time.monotonic()
        os.kill(self.proc.pid, signum)
        return at


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[Child]]:
    children: list[Child] = []
    yield children
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGCONT)
            child.proc.kill()
        child.proc.wait()


def start(children: list[Child], state: Path, waiting: bool) -> Child:
    child = Child(state)
    children.append(child)
    child.wait_said("waiting" if waiting else "leader")
    return child


def took_over_at(child: Child, epoch: int) -> float:
    return float(child.wait_said(f"leader {epoch} ").split()[2])


def read_log(path: Path) -> list[tuple[int, int]]:
    return [(int(e), int(s)) for e, s in (line.split() for line in path.read_text().splitlines())]


def stale_sends(state: Path) -> list[tuple[int, int]]:
    """Sends logged after a send of a newer epoch: the window the module docstring names."""
    newest, stale = 0, []
    for epoch, seq in read_log(state / "sends.log"):
        if epoch < newest:
            stale.append((epoch, seq))
        newest = max(newest, epoch)
    return stale


def wait_committed(state: Path, epoch: int) -> None:
    wait_for(lambda: any(e == epoch for e, _ in read_log(state / "commits.log")), 10, f"a commit of epoch {epoch}")


def assert_commits_ordered(state: Path) -> list[int]:
    epochs = [epoch for epoch, _ in read_log(state / "commits.log")]
    assert epochs == sorted(epochs), "a commit of an older epoch landed after a newer leader's"
    return epochs


def test_second_leader_refused_standby_waits_and_clean_stop_hands_over(tmp_path: Path) -> None:
    first = Lease.acquire(tmp_path, standby=False)
    assert first is not None and first.epoch == 1
    lease_dir = tmp_path / "lease"
    assert stat.S_IMODE(lease_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in lease_dir.iterdir()} == {0o600}
    assert running_pid(tmp_path) == os.getpid()
    with pytest.raises(AgentRunning, match=f"pid {os.getpid()}, lease epoch 1"):
        Lease.acquire(tmp_path, standby=False)

    waiting: list[str] = []
    taken: list[Lease | None] = []
    standby = threading.Thread(
        target=lambda: taken.append(Lease.acquire(tmp_path, standby=True, on_waiting=waiting.append))
    )
    standby.start()
    wait_for(lambda: bool(waiting), 5, "the standby to wait")
    assert f"pid {os.getpid()}" in waiting[0] and "epoch 1" in waiting[0]
    first.check()
    with first.committing():
        pass
    assert not taken, "the standby took over from a live, renewing leader"

    first.release()
    standby.join(5)
    second = taken[0]
    assert second is not None and second.epoch == 2
    with pytest.raises(Fenced):
        first.check()
    assert sorted(p.name for p in lease_dir.iterdir()) == ["commit.lock", "epoch-2"]
    info = read_lease(tmp_path)
    assert info is not None and (info.epoch, info.pid, info.alive) == (2, os.getpid(), True)

    stop = threading.Event()
    aborted: list[Lease | None] = []
    waiter = threading.Thread(target=lambda: aborted.append(Lease.acquire(tmp_path, standby=True, stop=stop)))
    waiter.start()
    stop.set()
    waiter.join(5)
    assert aborted == [None]

    second.release()
    info = read_lease(tmp_path)
    assert info is not None and (info.epoch, info.released, info.alive) == (2, True, False)
    assert running_pid(tmp_path) is None
    third = Lease.acquire(tmp_path, standby=False)  # a restart: the epoch keeps growing
    assert third is not None and third.epoch == 3
    third.release()


def test_standby_takes_over_killed_and_stopped_leaders_and_the_stale_one_is_fenced(
    tmp_path: Path, spawn: list[Child]
) -> None:
    leader = start(spawn, tmp_path, waiting=False)
    assert leader.said("leader 1 ")
    standby = start(spawn, tmp_path, waiting=True)
    killed_at = leader.signal(signal.SIGKILL)
    print(f"take-over after SIGKILL: {took_over_at(standby, 2) - killed_at:.3f} s")
    info = read_lease(tmp_path)
    assert info is not None and (info.epoch, info.pid) == (2, standby.proc.pid)

    third = start(spawn, tmp_path, waiting=True)
    stopped_at = standby.signal(signal.SIGSTOP)
    print(f"take-over after SIGSTOP: {took_over_at(third, 3) - stopped_at:.3f} s")
    wait_committed(tmp_path, 3)
    standby.signal(signal.SIGCONT)
    standby.wait_said("fenced-send 2")
    standby.wait_said("fenced-commit 2")
    assert standby.said("commit-after-fence") is None
    standby.wait_said("waiting")  # back to standing by

    assert assert_commits_ordered(tmp_path)[-1] == 3
    stale = stale_sends(tmp_path)
    print(f"sends after a newer epoch's: {stale}")
    assert all(epoch == 2 for epoch, _ in stale) and len(stale) <= 1


def test_kill_and_stop_loop_never_interleaves_commits(tmp_path: Path, spawn: list[Child]) -> None:
    rounds, stops = 10, 0
    children = [start(spawn, tmp_path, waiting=False), start(spawn, tmp_path, waiting=True)]
    for number in range(rounds):
        epoch = number + 1
        wait_committed(tmp_path, epoch)
        leader = next(c for c in children if c.proc.pid == running_pid(tmp_path))
        other = next(c for c in children if c is not leader)
        if number % 2 == 0:
            at = leader.signal(signal.SIGKILL)
            print(f"round {number}: SIGKILL, take-over in {took_over_at(other, epoch + 1) - at:.3f} s")
            leader.proc.wait()
            children = [other, start(spawn, tmp_path, waiting=True)]
        else:
            stops += 1
            at = leader.signal(signal.SIGSTOP)
            print(f"round {number}: SIGSTOP, take-over in {took_over_at(other, epoch + 1) - at:.3f} s")
            leader.signal(signal.SIGCONT)
            leader.wait_said(f"fenced-commit {epoch}")
            assert leader.said("commit-after-fence") is None
    wait_committed(tmp_path, rounds + 1)

    epochs = assert_commits_ordered(tmp_path)
    assert sorted(set(epochs)) == list(range(1, rounds + 2))
    stale = stale_sends(tmp_path)
    print(f"sends after a newer epoch's ({stops} stops): {stale}")
    stopped_epochs = set(range(2, rounds + 1, 2))
    assert len(stale) <= stops and {epoch for epoch, _ in stale} <= stopped_epochs
