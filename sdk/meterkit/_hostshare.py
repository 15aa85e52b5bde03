"""Rate-limit state shared by every process of one user on this machine.

A fixed, open-addressed table in a memory-mapped file (``/dev/shm/meterkit-<uid>/``, or
``limits_state_dir``; directory 0700, file 0600): a 64-byte header, then
:data:`SLOTS` slots of 32 bytes ``(key hash, expires_ns, tat_ns, tat_frac)``. A slot holds
one (limit, account) TAT (``_gcra``) as whole clock nanoseconds plus a fraction in the
limit's ticks, so no TAT is ever rounded, whatever the uptime.

The clock is ``time.monotonic_ns()``: on Linux that is CLOCK_MONOTONIC, one clock for
every process on the host (time since boot, never set back), so TATs written by one
process mean the same to another. After a reboot it starts again from zero: the header
keeps the boot id (``/proc/sys/kernel/random/boot_id``) and a table from another boot is
cleared (in ``/dev/shm`` it is gone anyway).

Updates happen under one lock per table: a POSIX named semaphore (``sem_open``, through
the standard library's ``_multiprocessing.SemLock``). Uncontended it is an atomic
operation in user space, 0.06 µs; an ``fcntl`` lock costs two system calls, 3-4 µs here,
most of the 5 µs budget. A semaphore is not released when its holder dies, so the holder
writes its pid into the header; a process that waits longer than
:data:`STUCK_SECONDS` checks that pid and, if the process is gone, releases the lock on its
behalf (counted as ``host_lock_recovered``). The critical section is a few dozen bytecodes.

A slot whose TAT has passed means a full bucket, the same as no slot: it may be taken by
any key. Claiming a slot (a key not yet cached by this process) searches up to
:data:`PROBES` slots for the key first, so a key never has two slots.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import struct
from pathlib import Path
from stat import S_ISDIR as stat_is_dir
from time import monotonic_ns
from typing import Any

from ._gcra import Rate, gcra

SLOTS = 65_536
PROBES = 32
SLOT = struct.Struct("<qqqq")
HEADER = struct.Struct("<8s16sqq")  # magic, boot id, slots, holder pid
HEADER_BYTES = 64
MAGIC = b"MKLIM001"
STUCK_SECONDS = 0.05


class HostTableFull(Exception):
    """No free slot within :data:`PROBES` of a key's home: decided by the fallback policy."""


def boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().replace(b"-", b"").decode())[:16]
    except (OSError, ValueError):
        return b"\0" * 16


def default_state_dir() -> Path:
    """``/dev/shm/meterkit-<uid>``: memory, cleared at boot. A directory there that is not
    this user's own is refused when opened (:class:`HostTable`)."""
    shm = Path("/dev/shm")  # noqa: S108 # shared by design; ownership and mode checked on open
    base = shm if shm.is_dir() else Path(os.environ.get("TMPDIR") or "/tmp")  # noqa: S108 # likewise
    return base / f"meterkit-{os.getuid()}"


def key_hash(text: str) -> int:
    """A 63-bit hash of a (limit, account) key; 0 means an empty slot."""
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return (value >> 1) or 1


class HostTable:
    """The mapped table and its lock. Made once per process and directory; survives fork
    (the mapping is shared, and the semaphore is a named one)."""

    def __init__(self, directory: Path, slots: int = SLOTS) -> None:
        import mmap

        # CPython's own binding of sem_open (multiprocessing's locks); untyped, hence Any
        SemLock: Any = importlib.import_module("_multiprocessing").SemLock

        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        owned = os.lstat(directory)
        if owned.st_uid != os.getuid() or not stat_is_dir(owned.st_mode):
            raise PermissionError(f"{directory} is not a directory of this user's; refusing to share limits there")
        os.chmod(directory, 0o700)
        self.path = directory / "limits.table"
        size = HEADER_BYTES + slots * SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: every slot empty, header to be written
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.slots = slots
        stat = os.stat(self.path)
        name = f"/meterkit-{os.getuid()}-{stat.st_dev}-{stat.st_ino}"
        try:
            self.sem = SemLock(1, 1, 1, name, False)  # kind 1: a semaphore; not unlinked at exit
        except FileExistsError:
            self.sem = SemLock._rebuild(0, 1, 1, name)  # opens the existing one by name
        self.recovered = 0
        self._check_header()

    def _check_header(self) -> None:
        boot = boot_id()
        self.acquire()
        try:
            magic, stored_boot, slots, _ = HEADER.unpack_from(self.mm, 0)
            if magic != MAGIC or stored_boot != boot or slots != self.slots:
                self.mm[HEADER_BYTES:] = bytes(len(self.mm) - HEADER_BYTES)
                HEADER.pack_into(self.mm, 0, MAGIC, boot, self.slots, os.getpid())
        finally:
            self.release()

    def acquire(self) -> None:
        while not self.sem.acquire(True, STUCK_SECONDS):
            holder = HEADER.unpack_from(self.mm, 0)[3]
            if holder and holder != os.getpid() and not _alive(holder):
                try:
                    self.sem.release()
                    self.recovered += 1
                except ValueError:  # another process recovered it first
                    pass
        struct.pack_into("<q", self.mm, 32, os.getpid())

    def release(self) -> None:
        struct.pack_into("<q", self.mm, 32, 0)
        self.sem.release()

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            if offset < 0 or SLOT.unpack_from(mm, offset)[0] != key:
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
