"""The leader's lease on a state directory: one agent sends, a standby takes over.

Two agents may share one host and state directory: the leader holds the lease, the
other (``standby=True``) waits and takes over when the leader dies, is paused or stops.
A ``flock`` alone cannot do this: a process stopped by SIGSTOP keeps its locks. So:

- **Epochs.** ``<state>/lease/epoch-<N>`` names the holder of epoch N (pid and start
  time, :func:`meterkit._hostshare.identity`). It is written to a private file first and
  then hard-linked into place: ``link`` fails if the name exists, so among any number of
  waiters exactly one creates N+1, and a reader never sees it half written. The highest
  file is the current epoch; it is never removed, so epochs only grow over the life of
  the state directory (the directory is fsynced after each claim). A winner unlinks every
  lower epoch file before it does anything else.
- **Heartbeat.** The holder's renewal thread touches its epoch file's mtime every
  ``ttl / 6`` seconds. A waiter does not compare that mtime with any clock: it notes when
  (by its own ``CLOCK_MONOTONIC``) it first saw the current value, and takes over when the
  value has not changed for ``ttl``. So a wall-clock step never causes or delays a
  take-over, and the waiter's deadline is never earlier than the holder's last renewal
  plus ``ttl``. Fast paths: a holder that is gone (no such pid, a zombie, or its pid now
  another process's: start times differ) or that released the lease (mtime set to 0 by
  :meth:`Lease.release`) is taken over at once, within one poll (:data:`POLL_SECONDS`).
- **Fencing.** :meth:`Lease.check` raises :class:`Fenced` when the holder's own epoch file
  has been unlinked (one ``fstat`` of the open file: its link count is 0), when the
  renewal thread has seen a newer epoch, or when the last renewal that succeeded began more
  than ``ttl * FENCE_FRACTION`` ago. The last condition is what a leader woken from
  SIGSTOP hits first: ``CLOCK_MONOTONIC`` runs during a stop, so it finds its renewal
  stale and holds back until a renewal proves that no newer epoch exists. Since the waiter
  waits a full ``ttl`` from a point no earlier than that renewal, a leader always fences
  itself before a waiter may take over because of silence.
- **Commits.** :meth:`Lease.committing` takes ``<state>/lease/commit.lock``, checks the
  fence inside it, and yields. A winner, after unlinking the lower epochs, takes the same
  lock once before returning, i.e. before the agent reads its checkpoint or journal. A
  stale leader's commit either checked the fence before the unlink, and then holds the
  lock until its commit is complete, so the new leader reads state that includes it; or
  it checks after the unlink and is refused. No commit of epoch N can land after the
  leader of N+1 read the state. The price: a leader stopped *inside* its commit holds the
  lock, and the take-over waits for it to resume or die (the kernel drops its lock).
- **The one window left: sends.** A leader that passed :meth:`Lease.check` and is then
  paused before its socket write sends once more on waking, possibly after the new leader
  has started sending. Its next check fails, so at most one batch per pause goes out
  late, and it cannot commit. Every measurement carries its uid and every request an
  idempotency key derived from them, so the late batch re-sends measurements the backend
  de-duplicates (or that the new leader re-sends from the same checkpoint): the count is
  unchanged, and the stale leader's checkpoint never advances.

All files are private (directory 0700, files 0600), as the rest of the agent's state.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meterkit._guard import background_error
from meterkit._hostshare import identity, named_holder_gone
from meterkit._spool import private_dir

#: The lease's directory inside the state directory.
LEASE_DIR = "lease"
#: The lock a commit holds, and a new leader takes once before it reads state.
COMMIT_LOCK = "commit.lock"
EPOCH_PREFIX = "epoch-"
#: How long a holder's heartbeat may stay unchanged before a standby takes over.
TTL_SECONDS = 1.2
#: The holder renews this many times per ``ttl``.
RENEWALS_PER_TTL = 6
#: A holder fences itself when its last successful renewal began this share of ``ttl``
#: ago: the rest is the margin for the work between a check and a send.
FENCE_FRACTION = 0.75
#: How often a waiter looks at the lease.
POLL_SECONDS = 0.05
#: The mtime of a released epoch file: no renewal ever writes it.
RELEASED_NS = 0


class AgentRunning(Exception):
    """Another agent holds the state directory's lease."""


class Fenced(Exception):
    """This holder has lost the lease (or may have): it must neither send nor commit."""


@dataclass(frozen=True)
class LeaseInfo:
    """What ``agent status`` shows: the current epoch and its holder."""

    epoch: int
    pid: int
    #: Seconds since the last renewal by the wall clock (approximate); None once released.
    renewal_age_seconds: float | None
    #: The holder process exists (stopped or not) and has not released the lease.
    alive: bool
    released: bool


@dataclass(frozen=True)
class _Seen:
    epoch: int
    word: int  # the holder's identity; 0 if unreadable
    mtime_ns: int

    @property
    def pid(self) -> int:
        return self.word & 0xFFFF_FFFF if self.word else -1

    @property
    def released(self) -> bool:
        return self.mtime_ns == RELEASED_NS

    @property
    def gone(self) -> bool:
        return bool(self.word) and named_holder_gone(self.word)


def _epochs(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    width = len(EPOCH_PREFIX)
    return sorted(int(n[width:]) for n in names if n.startswith(EPOCH_PREFIX) and n[width:].isdecimal() and n.isascii())


def _look(directory: Path) -> _Seen | None:
    """The current (highest) epoch and its holder, or None if no epoch was ever taken."""
    for _ in range(100):  # a file pruned between the listing and the read: look again
        epochs = _epochs(directory)
        if not epochs:
            return None
        try:
            fd = os.open(directory / f"{EPOCH_PREFIX}{epochs[-1]}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            mtime_ns = os.fstat(fd).st_mtime_ns
            fields = os.read(fd, 64).split()
        finally:
            os.close(fd)
        word = int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else 0
        return _Seen(epochs[-1], word, mtime_ns)
    raise OSError(errno.EAGAIN, f"the lease in {directory} keeps changing")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _claim(directory: Path, epoch: int) -> int | None:
    """Create ``epoch-<epoch>`` naming this process; its open descriptor, or None when
    another process created it first."""
    tmp = directory / f".claim-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {identity()}\n".encode("ascii"))
        os.fsync(fd)
        try:
            os.link(tmp, directory / f"{EPOCH_PREFIX}{epoch}")
        except FileExistsError:
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return fd


def _prune(directory: Path, epoch: int) -> None:
    """Unlink every epoch file below ``epoch``, and claims left by processes that died."""
    for name in os.listdir(directory):
        if name.startswith(EPOCH_PREFIX):
            number = name[len(EPOCH_PREFIX) :]
            if number.isdecimal() and int(number) < epoch:
                (directory / name).unlink(missing_ok=True)
        elif name.startswith(".claim-"):
            pid = name.split("-")[1]
            if pid.isdecimal() and not Path(f"/proc/{pid}").exists():
                (directory / name).unlink(missing_ok=True)
    _fsync_dir(directory)


class _Silence:
    """How long the current holder's heartbeat has been unchanged, by this process's clock."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.key: tuple[int, int] | None = None
        self.since = 0.0

    def over(self, seen: _Seen) -> bool:
        """The lease may be taken: released, its holder gone, or silent for ``ttl``."""
        if seen.released or seen.gone:
            return True
        now = time.monotonic()
        key = (seen.epoch, seen.mtime_ns)
        if key != self.key:
            self.key, self.since = key, now
            return False
        return now - self.since >= self.ttl


def _take(directory: Path, epoch: int, ttl: float) -> Lease | None:
    started = time.monotonic()
    fd = _claim(directory, epoch)
    if fd is None:
        return None
    _fsync_dir(directory)
    _prune(directory, epoch)
    lease = Lease(directory, epoch, fd, ttl, started)
    with lease.committing_barrier():
        pass  # a stale leader's commit in progress lands before this leader reads state
    if os.fstat(fd).st_nlink == 0:  # superseded while this process was paused in here
        lease.release()
        return None
    lease.start()
    return lease


def acquire(
    state_dir: str | Path,
    *,
    standby: bool,
    ttl: float = TTL_SECONDS,
    on_waiting: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Lease | None:
    """Take the lease of ``state_dir``. With a live holder: raise :class:`AgentRunning`
    (``standby=False``), or wait until it dies, stops renewing or releases, calling
    ``on_waiting`` with a message naming the holder (once per holder waited for). Returns
    None if ``stop`` is set while waiting."""
    directory = private_dir(Path(state_dir) / LEASE_DIR)
    silence = _Silence(ttl)
    announced = 0
    while True:
        seen = _look(directory)
        if seen is None or silence.over(seen):
            lease = _take(directory, (seen.epoch if seen else 0) + 1, ttl)
            if lease is not None:
                return lease
            continue
        if not standby:
            raise AgentRunning(
                f"another agent (pid {seen.pid}, lease epoch {seen.epoch}) is running with the state directory"
                f" {state_dir}; stop it, run this one as a standby, or give it its own --state-dir"
            )
        if on_waiting is not None and announced != seen.epoch:
            announced = seen.epoch
            on_waiting(f"standing by: the agent with pid {seen.pid} holds lease epoch {seen.epoch} of {state_dir}")
        if stop is not None:
            if stop.wait(POLL_SECONDS):
                return None
        else:
            time.sleep(POLL_SECONDS)


class Lease:
    """A held lease. Get one with :meth:`acquire`; :meth:`check` before every send,
    :meth:`committing` around every commit, :meth:`release` at a clean stop."""

    acquire = staticmethod(acquire)

    def __init__(self, directory: Path, epoch: int, fd: int, ttl: float, renewed: float) -> None:
        self.directory = directory
        self.epoch = epoch
        self.ttl = ttl
        #: Called (from the renewal thread) with the reason when a newer epoch is seen.
        self.on_lost: Callable[[str], None] | None = None
        self._fd = fd
        self._fence_after = ttl * FENCE_FRACTION
        self._renewed = renewed
        self._lost: str | None = None
        self._released = False
        self._stopping = threading.Event()
        self._threads = threading.Lock()
        self._commit_fd = os.open(directory / COMMIT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._thread = threading.Thread(target=self._renew_loop, name=f"meterkit-lease-{epoch}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def lost(self) -> str | None:
        """Why this holder lost the lease for good (a newer epoch, or released), or None:
        a renewal that is merely late fences :meth:`check` until the next one, not for good."""
        return self._lost

    def check(self) -> None:
        """Raise :class:`Fenced` unless this process certainly still holds the lease."""
        if self._lost is not None:
            raise Fenced(self._lost)
        if os.fstat(self._fd).st_nlink == 0:
            raise Fenced(f"lease epoch {self.epoch} was taken over by a newer epoch")
        age = time.monotonic() - self._renewed
        if age > self._fence_after:
            raise Fenced(f"lease epoch {self.epoch} not renewed for {age:.2f} s (paused, or starved)")

    @contextlib.contextmanager
    def committing_barrier(self) -> Iterator[None]:
        """Hold the commit lock, without checking the fence. Threads of this process take
        it in turn: a ``flock`` is the open file's, so one thread's unlock would release it
        under another that is still committing (each destination commits on its own thread)."""
        with self._threads:
            fcntl.flock(self._commit_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._commit_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Hold the commit lock and check the fence inside it; raises :class:`Fenced`
        (before the body runs) when this holder may no longer commit."""
        with self.committing_barrier():
            self.check()
            yield

    def release(self) -> None:
        """Stop renewing and hand over at once: a waiting standby need not wait ``ttl``.
        Idempotent; :meth:`check` raises :class:`Fenced` after it."""
        if self._released:
            return
        self._released = True
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._lost is None:
            self._lost = f"lease epoch {self.epoch} was released"
        with contextlib.suppress(OSError):
            os.utime(self._fd, ns=(RELEASED_NS, RELEASED_NS))
        os.close(self._commit_fd)
        os.close(self._fd)

    def _renew_loop(self) -> None:
        interval = self.ttl / RENEWALS_PER_TTL
        while not self._stopping.wait(interval):
            try:
                if not self._renew():
                    return
            except Exception as exc:  # a failed renewal lets the fence close; reported, retried
                background_error("lease renewal", exc)

    def _renew(self) -> bool:
        """Touch the heartbeat; then, if no newer epoch exists, count it as renewed."""
        started = time.monotonic()
        os.utime(self._fd)
        newer = [e for e in _epochs(self.directory) if e > self.epoch]
        if newer or os.fstat(self._fd).st_nlink == 0:
            self._lost = f"lease epoch {self.epoch} was taken over (epoch {max(newer, default=self.epoch + 1)})"
            if self.on_lost is not None:
                try:
                    self.on_lost(self._lost)
                except Exception as exc:  # the integrator's hook; the lease is lost regardless
                    background_error("lease on_lost", exc)
            return False
        self._renewed = started
        return True


def read_lease(state_dir: str | Path) -> LeaseInfo | None:
    """The current epoch of ``state_dir`` and its holder, or None when no agent ever led."""
    seen = _look(Path(state_dir) / LEASE_DIR)
    if seen is None:
        return None
    age = None if seen.released else max(0.0, time.time() - seen.mtime_ns / 1e9)
    return LeaseInfo(seen.epoch, seen.pid, age, not seen.released and not seen.gone, seen.released)


def running_pid(state_dir: str | Path) -> int | None:
    """The pid of the agent holding ``state_dir``'s lease, or None when none holds it."""
    info = read_lease(state_dir)
    return info.pid if info is not None and info.alive else None
