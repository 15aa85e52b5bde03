"""Rate-limit state shared by every process of one user on this machine.

A fixed, open-addressed table in a memory-mapped file (``/dev/shm/meterkit-<uid>/<spool>/``,
one per spool: :func:`default_state_dir`; or ``limits_state_dir``; directory 0700, file 0600): a 64-byte header, then
:data:`SLOTS` slots of 32 bytes ``(key hash, expires_ns, tat_ns, tat_frac)``. A slot holds
one (limit, account) TAT (``_gcra``) as whole clock nanoseconds plus a fraction in the
limit's ticks, so no TAT is ever rounded, whatever the uptime.

The clock is ``time.monotonic_ns()``: on Linux that is CLOCK_MONOTONIC, one clock for
every process on the host (time since boot, never set back), so TATs written by one
process mean the same to another. After a reboot it starts again from zero: the header
keeps the boot id (``/proc/sys/kernel/random/boot_id``) and a table from another boot is
cleared (in ``/dev/shm`` it is gone anyway).

Updates happen under one lock per table: a POSIX named semaphore (``sem_open``) through
the ``posix_ipc`` package. Taken when free it is one atomic instruction in user space
(``sem_trywait``, no system call); an ``fcntl``/``flock`` lock costs two system calls,
2 µs here, half the 5 µs budget of a host decision. The semaphore is private: named per
user and table file, mode 0600, and one owned by anybody else is refused.

A semaphore is not released when its holder dies, so the header names the holder
(:func:`identity`): one 8-byte word, written whole, which is the holder's identity (pid and
start time) while it holds the lock and minus the clock at its last release otherwise. A
process that waits more than :data:`STUCK_SECONDS` takes the lock over when, under an
``flock`` on the table file that serialises recoverers (slow path only):

- the word names a holder that is gone (no such pid, another process with that pid, or a
  zombie): no one else can be holding, because the semaphore is posted only by a
  release, which first overwrites the name; the waiter writes its own name and carries
  on as the holder, the semaphore still taken once. It never posts on the dead one's
  behalf, so two recoverers cannot let two processes in: the second finds the first's name.
- the word names nobody, it has not changed for :data:`NOBODY_SECONDS`, and the
  semaphore is taken: its holder died in the instant between taking the semaphore and
  writing its name (or clearing it and posting). A live process frozen for that long in
  that instant (SIGSTOP) would find its lock taken over; that is the one residual hazard,
  accepted over every process of the host waiting forever.

Each take-over is counted (``recovered``). The critical section is a few dozen bytecodes.

A slot whose TAT has passed means a full bucket, the same as no slot: it may be taken by
any key. Claiming a slot (a key not yet cached by this process) searches up to
:data:`PROBES` slots for the key first, so a key never has two slots.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path
from stat import S_ISDIR as stat_is_dir
from time import monotonic_ns
from typing import Any

from ._gcra import Rate, gcra
from ._permissions import PRIVATE_DIR_MODE, _make_dirs

SLOTS = 65_536
PROBES = 32
SLOT = struct.Struct("<qqqq")
HEADER = struct.Struct("<8s16sq")  # magic, boot id, slots; then the holder's word (NAME_AT)
HEADER_BYTES = 64
MAGIC = b"MKLIM002"
#: A waiter looks for a dead holder after this long.
STUCK_SECONDS = 0.05
#: A lock taken with nobody named is taken over when nothing has changed for this long.
NOBODY_SECONDS = 1.0
#: The holder's word: native byte order and size, so ``pack_into`` is one 8-byte store
#: (``memcpy``) that no reader sees half written; the standard sizes (``<q``) are written
#: byte by byte.
NAME_WORD = struct.Struct("q")
NAME_AT = 32


class HostTableFull(Exception):
    """No free slot within :data:`PROBES` of a key's home: decided by the fallback policy."""


def boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().replace(b"-", b"").decode())[:16]
    except (OSError, ValueError):
        return b"\0" * 16


def default_state_dir(spool_dir: Path) -> Path:
    """``/dev/shm/meterkit-<uid>/<name>-<hash>``: memory, cleared at boot; one table per
    spool directory, named by the spool's project (or its own name) and a hash of its full
    path. The processes of one application (one spool) share their host limits; two
    applications of one user never do, as their default spools are per project. A
    directory there that is not this user's own is refused when opened (:class:`HostTable`)."""
    shm = Path("/dev/shm")  # noqa: S108 # shared by design; ownership and mode checked on open
    base = shm if shm.is_dir() else Path(os.environ.get("TMPDIR") or "/tmp")  # noqa: S108 # likewise
    where = Path(os.path.abspath(spool_dir))  # not resolve(): no file system access, and none may fail
    label = where.parent.name if where.name == "spool" else where.name  # <project>-<hash>/spool: the project
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:40] or "root"
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()[:12]
    return base / f"meterkit-{os.getuid()}" / f"{name}-{digest}"


def key_hash(text: str) -> int:
    """A 63-bit hash of a (limit, account) key; 0 means an empty slot."""
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return (value >> 1) or 1


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None for no such process or a zombie
    (dead, not yet waited for). Linux's ``/proc``; elsewhere ``0``: unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command, which may hold ") "
    except FileNotFoundError:
        return None
    except OSError:
        return 0 if _pid_exists(pid) else None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_me = 0


def identity() -> int:
    """This process's word for the header: its pid (under 2**22 on Linux) and the low 31
    bits of its start time above it. Positive; never 0. Computed once per process."""
    global _me  # one per process, forgotten in a forked child (below)
    if not _me:
        pid = os.getpid()
        _me = pid | ((_start_ticks(pid) or 0) & 0x7FFF_FFFF) << 32
    return _me


def _forget_identity() -> None:
    global _me
    _me = 0


os.register_at_fork(after_in_child=_forget_identity)


def named_holder_gone(word: int) -> bool:
    """The process ``word`` names has exited (or its pid now belongs to another process)."""
    pid, start = word & 0xFFFF_FFFF, word >> 32
    now = _start_ticks(pid)
    return now is None or bool(start and now and now & 0x7FFF_FFFF != start)


def _private_dir(directory: Path) -> None:
    """``directory``, made if missing, this user's alone; every directory made on the way
    to it is 0700 too (``mkdir(parents=True)`` would make them with the umask's mode)."""
    if not directory.is_dir():
        _make_dirs(directory, PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
    owned = os.lstat(directory)
    if owned.st_uid != os.getuid() or not stat_is_dir(owned.st_mode):
        raise PermissionError(f"{directory} is not a directory of this user's; refusing to share limits there")
    os.chmod(directory, 0o700)


def _semaphore(name: str) -> tuple[Any, tuple[type[Exception], ...]]:
    """The named semaphore (created at 1, mode 0600, when absent) and the errors of a wait
    that did not take it (busy, or interrupted by a signal whose handler returned: waited
    again, as the standard library's waits do since PEP 475). glibc keeps it as
    ``/dev/shm/sem.<name>``: one made there by another user, or readable by others, is
    refused, as the directory is."""
    import posix_ipc  # type: ignore[import-not-found,unused-ignore] # no type stubs; not on Windows

    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT, 0o600, 1)
    waits = (posix_ipc.BusyError, posix_ipc.SignalError)
    try:
        found = os.stat(f"/dev/shm/sem.{name.lstrip('/')}")  # noqa: S108 # glibc's place for it
    except OSError:
        return sem, waits  # another C library keeps it elsewhere: sem_open's mode is all there is
    if found.st_uid != os.getuid() or found.st_mode & 0o077:
        sem.close()
        raise PermissionError(f"the semaphore {name} is not this user's alone; refusing to share limits with it")
    return sem, waits


class HostTable:
    """The mapped table and its lock. Made once per process and directory; survives fork
    (the mapping is shared, the semaphore is a named one, and the name written is looked
    up again in a forked child)."""

    def __init__(self, directory: Path, slots: int = SLOTS) -> None:
        import mmap

        _private_dir(directory)
        self.path = directory / "limits.table"
        size = HEADER_BYTES + slots * SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: every slot empty, nobody named, header to be written
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.slots = slots
        stat = os.stat(self.path)
        self.sem, self._busy = _semaphore(f"/meterkit-{os.getuid()}-{stat.st_dev}-{stat.st_ino}")
        self._try = self.sem.acquire  # bound once: one attribute lookup on the hot path
        self.recovered = 0
        self._check_header()

    def _check_header(self) -> None:
        boot = boot_id()
        self.acquire()
        try:
            magic, stored_boot, slots = HEADER.unpack_from(self.mm, 0)
            if magic != MAGIC or stored_boot != boot or slots != self.slots:
                self.mm[HEADER_BYTES:] = bytes(len(self.mm) - HEADER_BYTES)
                HEADER.pack_into(self.mm, 0, MAGIC, boot, self.slots)
        finally:
            self.release()

    def acquire(self) -> None:
        try:
            self._try(0)  # sem_trywait: an atomic instruction when the lock is free
        except self._busy:
            self._wait()
        NAME_WORD.pack_into(self.mm, NAME_AT, identity())

    def release(self) -> None:
        NAME_WORD.pack_into(self.mm, NAME_AT, -monotonic_ns())  # nobody named; a new word every release
        self.sem.release()

    def _wait(self) -> None:
        """Wait for the lock, taking it over from a holder that is gone (module docstring)."""
        quiet: tuple[int, float] | None = None  # (the word naming nobody, since when)
        while True:
            try:
                self._try(STUCK_SECONDS)
                return
            except self._busy:
                pass
            took, quiet = self._take_over(quiet)
            if took:
                return

    def _take_over(self, quiet: tuple[int, float] | None) -> tuple[bool, tuple[int, float] | None]:
        """Under an ``flock`` of a descriptor opened here (so it excludes every other
        recoverer, thread or process, forked or not): take the lock over if its holder is
        gone. Returns (taken, the quiet word and since when)."""
        import fcntl

        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            word = NAME_WORD.unpack_from(self.mm, NAME_AT)[0]
            if word > 0:
                if not named_holder_gone(word):
                    return False, None
            elif quiet is None or quiet[0] != word:
                return False, (word, time.monotonic())
            elif time.monotonic() - quiet[1] < NOBODY_SECONDS or self.sem.value > 0:
                return False, quiet
            NAME_WORD.pack_into(self.mm, NAME_AT, identity())  # the holder now: the semaphore stays taken once
            self.recovered += 1
            return True, None
        finally:
            os.close(fd)  # and with it the flock

    def find(self, key: int, now_ns: int) -> int:
        """The offset of ``key``'s slot, claiming one if needed. Call under the lock."""
        home = key % self.slots
        free = -1
        mm = self.mm
        for probe in range(PROBES):
            offset = HEADER_BYTES + ((home + probe) % self.slots) * SLOT.size
            stored, expires, _, _ = SLOT.unpack_from(mm, offset)
            if stored == key:
                return offset
            if free < 0 and (stored == 0 or expires <= now_ns):
                free = offset
        if free < 0:
            raise HostTableFull(f"no free slot in {PROBES} of the host table {self.path}")
        # held until the caller writes its TAT (under this same lock): not free meanwhile
        SLOT.pack_into(mm, free, key, now_ns + 1, 0, 0)
        return free


class HostGcra:
    """One rate limit decided in the host table: every process of this user on the host
    shares its TAT per account."""

    __slots__ = ("_offsets", "key", "rate", "table")

    def __init__(self, rate: Rate, key: str, table: HostTable) -> None:
        self.rate, self.key, self.table = rate, key, table
        self._offsets: dict[str, tuple[int, int]] = {}  # account -> (hash, last known offset)

    def decide(self, account: str, quantity: int) -> tuple[bool, int, int]:
        """(allowed, remaining, retry_after_ns). Raises :class:`HostTableFull`."""
        rate, table = self.rate, self.table
        known = self._offsets.get(account)
        if known is None:
            if len(self._offsets) > 100_000:
                self._offsets.clear()
            known = (key_hash(f"{self.key}\0{account}"), -1)
        key, offset = known
        mm = table.mm
        denom = rate.denom
        table.acquire()
        try:
            now_ns = monotonic_ns()
            stored, _, tat_ns, frac = SLOT.unpack_from(mm, offset) if offset >= 0 else (0, 0, 0, 0)
            if stored != key:  # not cached, or the slot expired and was taken by another key
                offset = table.find(key, now_ns)
                self._offsets[account] = (key, offset)
                _, _, tat_ns, frac = SLOT.unpack_from(mm, offset)
            now = now_ns * denom
            allowed, new, remaining, excess = gcra(rate, tat_ns * denom + frac, now, quantity)
            if allowed:
                whole, frac = divmod(new, denom)
                SLOT.pack_into(mm, offset, key, whole + (frac > 0), whole, frac)
        finally:
            table.release()
        return allowed, remaining, rate.retry_units(excess) if excess else 0
