"""A stand-in agent for the lease tests: waits for the lease as a standby, then loops
``check()`` → append ``"<epoch> <seq>"`` to the sends log → append the same under
``committing()`` to the commits log. Fenced, it says so on stdout (for the send and for
a commit it then tries) and stands by again. Usage: ``lease_child.py STATE SENDS COMMITS TTL``."""

from __future__ import annotations

import os
import sys
import time

from meterkit_agent.lease import Fenced, Lease


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def lead(lease: Lease, sends: int, commits: int) -> None:
    seq = 0
    while True:
        try:
            lease.check()
        except Fenced as exc:
            say(f"fenced-send {lease.epoch} {exc}")
            try:
                with lease.committing():
                    say(f"commit-after-fence {lease.epoch}")
            except Fenced:
                say(f"fenced-commit {lease.epoch}")
            return
        os.write(sends, f"{lease.epoch} {seq}\n".encode())
        try:
            with lease.committing():
                os.write(commits, f"{lease.epoch} {seq}\n".encode())
        except Fenced as exc:
            say(f"fenced-commit {lease.epoch} {exc}")
            return
        seq += 1
        time.sleep(0.005)


def main() -> None:
    state, sends_path, commits_path, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    sends = os.open(sends_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    commits = os.open(commits_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    while True:
        lease = Lease.acquire(state, standby=True, ttl=ttl, on_waiting=lambda message: say(f"waiting {message}"))
        assert lease is not None  # no stop event: it waits until it leads
        say(f"leader {lease.epoch} {time.monotonic()}")
        lead(lease, sends, commits)
        lease.release()


if __name__ == "__main__":
    main()
