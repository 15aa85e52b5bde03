"""Where the flusher puts validated measurements: the spool, or memory (for tests).

A full disk must not hide what it costs (DESIGN.md §3: every loss counted "even when the
disk that would record it is full"). So the spool keeps room for loss records twice over:

- **Disk.** Each process holds :data:`LOSS_RESERVE_BYTES` of disk in a reserve file
  (``<spool>/reserve/``). Measurements are written only while it is held. When a write
  of loss records alone meets a full disk, the reserve is deleted and the write retried
  at once in the space it gave back; measurements wait until the reserve can be held
  again and ``statvfs`` shows room for them, which is how the sink learns the disk has
  room again.
- **Budget.** The last sixteenth of ``max_spool_bytes`` (at most the same 64 KiB) takes
  loss records only.

What does not fit either stays counted in memory and goes first when writing works again
(the flusher's part). A write the disk took in part is cut back (``SegmentWriter``), so
retries never duplicate a frame. See docs/spool-format.md, "A full disk".
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from . import _guard
from ._errors import safe_repr
from ._spool import (
    KIND_BATCH,
    KIND_CONTROL,
    KIND_MEASUREMENT,
    REJECTED_DIR,
    NotDurable,
    SegmentWriter,
    encode_frame,
    open_private,
    private_dir,
    spool_bytes,
)

#: Disk each process holds for its loss records, and the most of the spool budget kept for them.
LOSS_RESERVE_BYTES = 64 * 1024
RESERVE_DIR = "reserve"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_HOST = socket.gethostname()


class SinkUnavailable(Exception):
    """The sink cannot take records now. ``reason`` is the loss reason if they end up dropped.
    ``written``: they were written all the same, only not known to be on disk (a failed
    ``fsync``); writing them again would duplicate them."""

    def __init__(self, reason: str, detail: str, *, written: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.written = written


class Sink(Protocol):
    #: returns None, or how many of ``records`` it counted as lost itself (the direct sink)
    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> int | None: ...
    def reject(self, entry: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...


class SpoolSink:
    """Frames records into this process's spool segments, within a disk budget, keeping
    room for loss records (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        writer_id: str,
        *,
        max_segment_bytes: int,
        max_segment_age_seconds: float,
        max_spool_bytes: int,
        fsync: bool,
        validated: str | None = None,
    ) -> None:
        self.directory = directory
        self.max_spool_bytes = max_spool_bytes
        self._records_budget = max_spool_bytes - min(LOSS_RESERVE_BYTES, max_spool_bytes // 16)
        self._writer_id = writer_id
        self._writer = SegmentWriter(
            directory,
            writer_id,
            max_segment_bytes=max_segment_bytes,
            max_segment_age_seconds=max_segment_age_seconds,
            fsync=fsync,
            meta={"validated": validated},  # null: the agent validates these frames
        )
        self.reserve = DiskReserve(directory / RESERVE_DIR, writer_id)
        self._disk_full = False  # the last write met a full disk
        self._reject_fd = -1
        self._used = spool_bytes(directory)
        self._used_checked = time.monotonic()
        self.lock = threading.Lock()

    def _room_for(self, size: int, budget: int) -> bool:
        if self._used + size <= budget:
            return True
        # The agent retires delivered segments; look again, at most once a second.
        now = time.monotonic()
        if now - self._used_checked >= 1.0:
            self._used, self._used_checked = spool_bytes(self.directory), now
        return self._used + size <= budget

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        """Append ``records`` and ``controls`` in one write, or raise :class:`SinkUnavailable`
        and leave the spool as it was. A write without records carries loss counts: it may
        use the room kept for them."""
        self.write_batch([], records, controls)

    def write_batch(self, payloads: list[bytes], records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        """:meth:`write`, with batch frames (``_frames``) before ``records``, all in one write."""
        dumps, frame = orjson.dumps, encode_frame
        parts = [frame(KIND_BATCH, payload) for payload in payloads]
        parts.extend(frame(KIND_MEASUREMENT, dumps(r)) for r in records)
        parts.extend(frame(KIND_CONTROL, dumps(c)) for c in controls)
        data = b"".join(parts)
        measurements = bool(payloads or records)
        with self.lock:
            if not self._room_for(len(data), self._records_budget if measurements else self.max_spool_bytes):
                raise SinkUnavailable(
                    "spool_full",
                    f"spool {self.directory} is at its {self.max_spool_bytes}-byte limit",
                )
            if measurements and not (self.reserve.hold() and self._disk_has(len(data))):
                raise SinkUnavailable("disk_full", f"no space left on the disk of spool {self.directory}")
            try:
                self._append(data, len(parts))
                self._disk_full = self._disk_full and not measurements
            except OSError as exc:
                self._disk_full = exc.errno in _DISK_FULL and not isinstance(exc, NotDurable)
                if measurements or not self._disk_full or not self.reserve.release():
                    raise _unavailable(self.directory, exc) from exc
                try:  # loss counts alone, on a full disk: into the space the reserve gave back
                    self._append(data, len(parts))
                except OSError as again:
                    raise _unavailable(self.directory, again) from again

    def _disk_has(self, size: int) -> bool:
        """After the disk was full: whether it has room for ``size`` bytes now. Retrying
        blindly would cut a write short each time, and each costs a segment (``_spool``)."""
        if not self._disk_full:
            return True
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return True
        # f_blocks 0: a filesystem that does not say (some FUSE ones); just try.
        return not st.f_blocks or st.f_bavail * st.f_frsize >= size + 4096  # and a header

    def _append(self, data: bytes, frames: int) -> None:
        before = self._writer.bytes_written
        try:
            self._writer.write(data, frames)
        finally:
            self._used += self._writer.bytes_written - before

    def reject(self, entry: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(entry, default=safe_repr) + b"\n"
        except TypeError:
            # What orjson cannot encode is often why the record was refused: an integer past
            # 64 bits, a lone surrogate. The standard encoder writes both (escaped), exactly.
            line = json.dumps(entry, default=safe_repr, ensure_ascii=True).encode() + b"\n"
        with self.lock:
            if self._reject_fd < 0:
                folder = private_dir(self.directory / REJECTED_DIR)
                path = folder / f"{os.getpid()}-{self._writer_id}.jsonl"
                self._reject_fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            size = os.fstat(self._reject_fd).st_size
            try:
                if os.write(self._reject_fd, line) == len(line):
                    return
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._reject_fd, size)  # no torn line
                raise

    def close(self) -> None:
        with self.lock:
            try:
                self._writer.seal()
            except OSError as exc:
                _guard.logger.error(
                    "meterkit: cannot seal spool segment in %s (%s); it is complete, and the agent"
                    " takes it so once this process has exited",
                    self.directory,
                    exc.strerror,
                )
            self.reserve.release()
            if self._reject_fd >= 0:
                os.close(self._reject_fd)
                self._reject_fd = -1

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self._writer.abandon()
        self._writer.writer_id = self._writer_id = os.urandom(4).hex()
        self.reserve = DiskReserve(self.directory / RESERVE_DIR, self._writer_id)  # the parent's stays the parent's
        if self._reject_fd >= 0:
            os.close(self._reject_fd)
            self._reject_fd = -1


def _unavailable(directory: Path, exc: OSError) -> SinkUnavailable:
    if isinstance(exc, NotDurable):
        detail = f"spool {directory}: {exc.strerror}; what was written may not survive a power loss"
        return SinkUnavailable("spool_unwritable", detail, written=True)
    reason = "disk_full" if exc.errno in _DISK_FULL else "spool_unwritable"
    return SinkUnavailable(reason, f"cannot write to spool {directory}: {exc.strerror}")


class DiskReserve:
    """:data:`LOSS_RESERVE_BYTES` of disk held in a file of this process's own, so a full
    disk still has room for the record of what it cost. Taken on the flusher thread at the
    first write, not at start; released for loss records on a full disk and at shutdown.
    """

    def __init__(self, folder: Path, writer_id: str) -> None:
        self.folder = folder
        self.path = folder / f"{_HOST}-{os.getpid()}-{writer_id}.reserve"
        self.held = False
        self._swept = False

    def hold(self) -> bool:
        """Hold the space (again). False: the disk does not have it."""
        if self.held:
            return True
        try:
            if not self._swept:
                self._swept = True
                _sweep(private_dir(self.folder))
            fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                _allocate(fd, LOSS_RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        self.held = True
        return True

    def release(self) -> bool:
        """Give the space back to the filesystem. False if none was held."""
        if not self.held:
            return False
        self.held = False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True


def _allocate(fd: int, size: int) -> None:
    """Make the filesystem give ``fd`` ``size`` bytes of real blocks (not a sparse file)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = memoryview(bytes(size))
    while zeros:
        zeros = zeros[os.write(fd, zeros) :]


def _sweep(folder: Path) -> None:
    """Delete the reserves of this host's processes that have gone (a crash leaves its
    reserve behind). Another host's (a container sharing the volume) are not ours to judge."""
    for path in folder.glob(f"{glob.escape(_HOST)}-*.reserve"):
        host, pid, _ = path.name.rsplit("-", 2)
        if host != _HOST or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except OSError:
            pass  # alive, another user's


class MemorySink:
    """Keeps what would have been spooled, for :mod:`meterkit.testing`."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.controls: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        with self.lock:
            self.records.extend(records)
            self.controls.extend(controls)

    def reject(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.rejected.append(entry)

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        self.lock = threading.Lock()
