"""The spool: per-process segment files of length-prefixed, CRC-checked frames.

This module is the contract between the SDK (which writes) and the agent (which reads);
``docs/spool-format.md`` describes the same bytes for people. The reader never trusts
what it reads: a torn last frame is left for later, a corrupt frame is skipped and
reported, a damaged header costs only its own bytes (the frames after it are salvaged),
and garbage never raises.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Re-exported: the writer and the agent's state files use them from here.
from ._permissions import open_private as open_private
from ._permissions import private_dir as private_dir

FORMAT_VERSION, READABLE_VERSIONS = 2, frozenset({1, 2})  # 2 added batch frames; old spools still drain
MAGIC = b"MKSPOOL\x00"
SEGMENT_SUFFIX = ".mks"
REJECTED_DIR = "rejected"

# Header: magic, version (u16), reserved (u16), metadata length (u32), metadata JSON, CRC32.
_HEADER_FIXED = struct.Struct("<8sHHI")
_CRC = struct.Struct("<I")

# Frame: sync (2 bytes), kind (u8), flags (u8), payload length (u32), CRC32 (u32), payload.
# The CRC covers kind, flags, length and payload, so a corrupt length is caught too.
SYNC = b"\xd3\x4d"
_FRAME = struct.Struct("<2sBBII")
FRAME_HEADER_SIZE = _FRAME.size
MAX_FRAME_BYTES = 16 * 1024 * 1024

KIND_MEASUREMENT = 1
KIND_CONTROL = 2
KIND_SEAL = 3
KIND_BATCH = 4  # a whole flusher batch; its payload is read by ``meterkit._frames.batch_records``
_KINDS = {KIND_MEASUREMENT, KIND_CONTROL, KIND_SEAL, KIND_BATCH}
_crc32 = zlib.crc32
_pack_meta = struct.Struct("<BBI").pack


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One frame, ready to append to a segment."""
    meta = _pack_meta(kind, 0, len(payload))
    return SYNC + meta + _CRC.pack(_crc32(payload, _crc32(meta))) + payload


def encode_header(meta: dict[str, Any]) -> bytes:
    body = orjson.dumps(meta)
    fixed = _HEADER_FIXED.pack(MAGIC, FORMAT_VERSION, 0, len(body))
    return fixed + body + _CRC.pack(_crc32(fixed[8:] + body))


class NotDurable(OSError):
    """``fsync`` failed after a write: its frames are in the segment, not known to be on disk."""


class SegmentWriter:
    """Appends frames to this process's current segment, rotating by size and age.

    Not thread-safe: one flusher thread owns it (or a lock, in ``sync`` durability).
    """

    def __init__(
        self,
        directory: str | Path,
        writer_id: str,
        *,
        max_segment_bytes: int = 64 * 1024 * 1024,
        max_segment_age_seconds: float = 300.0,
        fsync: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.directory = private_dir(directory)
        self.meta = meta or {}  # extra header metadata, e.g. what the frames were validated against
        self.writer_id = writer_id
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age_seconds = max_segment_age_seconds
        self.fsync = fsync
        self.bytes_written = 0
        self._fd = -1
        self._seq = 0
        self._size = 0
        self._opened_at = 0.0
        self._frames = 0
        self.path: Path | None = None

    def write(self, data: bytes, frames: int) -> None:
        """Append already-encoded frames as one ``write``; opens or rotates as needed.

        All or nothing (docs/spool-format.md, "A full disk"): a write a full disk took in
        part is cut back before the ``OSError`` is raised, and if any of its bytes reached
        the file (a reader may have seen them) the segment is closed, so a retry never
        writes a frame twice nor over bytes a reader saw. A failed ``fsync`` raises
        :class:`NotDurable`: the frames are written, just not known to be on disk.
        """
        if self._fd >= 0 and (
            self._size + len(data) > self.max_segment_bytes
            or time.monotonic() - self._opened_at > self.max_segment_age_seconds
        ):
            self._seal()  # if this fails the segment stays open, or is retired: tried again
        if self._fd < 0:
            self._open()
        self._append(data, self.fsync)
        self._frames += frames

    def _append(self, data: bytes, fsync: bool) -> None:
        start, done, view = self._size, 0, memoryview(data)
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError:
            try:
                os.ftruncate(self._fd, start)  # the fd appends: a next write lands at `start`
            except OSError:
                self.abandon()  # its end is unknown: never append to it again
            else:
                if done:
                    self._retire()
            raise
        self._size += len(data)
        self.bytes_written += len(data)
        if fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise NotDurable(exc.errno, f"fsync failed: {exc.strerror}") from exc

    def _retire(self) -> None:
        """Close the segment after a cut-back write, sealed if the seal fits."""
        seal = encode_frame(KIND_SEAL, orjson.dumps({"frames": self._frames}))
        with contextlib.suppress(OSError):
            if os.write(self._fd, seal) != len(seal):
                os.ftruncate(self._fd, self._size)
        self.abandon()

    def _open(self) -> None:
        while True:
            self._seq += 1
            name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{self.writer_id}-{self._seq:05d}{SEGMENT_SUFFIX}"
            path = self.directory / name
            try:
                fd = open_private(path)
                break
            except FileExistsError:
                continue
        header = encode_header(
            {
                "format": FORMAT_VERSION,
                "writer": self.writer_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "segment": self._seq,
                "created_ns": time.time_ns(),
                **self.meta,
            }
        )
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:  # a full disk: leave no headless segment behind
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self.path, self._size, self._frames = fd, path, len(header), 0
        self._opened_at = time.monotonic()
        self.bytes_written += len(header)

    def seal(self) -> None:
        """Write the seal frame and close: the agent knows no more frames will follow. If
        the seal does not fit, the segment is closed without it and the ``OSError`` raised."""
        try:
            self._seal()
        except OSError:
            self.abandon()
            raise

    def _seal(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(NotDurable):  # the seal is written: the segment is done
            self._append(encode_frame(KIND_SEAL, orjson.dumps({"frames": self._frames})), fsync=True)
        os.close(self._fd)
        self._fd = -1

    def abandon(self) -> None:
        """Close the segment without a seal: after ``fork()``, or when it cannot be written."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self.path = None


# ---------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Frame:
    offset: int
    kind: int
    payload: bytes

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass(frozen=True)
class Corruption:
    offset: int
    length: int
    reason: str


@dataclass
class SegmentRead:
    """What one pass over a segment found.

    ``next_offset`` is where the next read should start: after the last good frame, or at
    a torn tail that the writer may still complete. ``torn`` says such a tail is there.
    ``header_corrupt``: why the header is unreadable (its bytes are ``corrupt[0]``, the
    writer is unknown); the frames after it are read all the same. ``error``: nothing could
    be read (missing or unreadable file, another format version, not a segment).
    """

    path: Path
    header: dict[str, Any] | None
    frames: list[Frame] = field(default_factory=list)
    corrupt: list[Corruption] = field(default_factory=list)
    next_offset: int = 0
    sealed: bool = False
    torn: bool = False
    error: str | None = None
    header_corrupt: str | None = None


_BAD_MAGIC = "corrupt segment header (bad magic)"


def _read_header(buf: bytes) -> tuple[dict[str, Any] | None, int, str | None, bool]:
    """Return (metadata, offset after header, problem, final).

    (None, 0, None, False) means: too short yet. A problem that is not ``final`` is a
    damaged header, which frames may follow. A ``final`` one checks out (CRC) and names
    another format version: the reader stops there, it never guesses.
    """
    if not MAGIC.startswith(buf[: len(MAGIC)]):
        return None, 0, _BAD_MAGIC, False
    if len(buf) < _HEADER_FIXED.size:
        return None, 0, None, False
    _magic, version, _reserved, length = _HEADER_FIXED.unpack_from(buf)
    end = _HEADER_FIXED.size + length + _CRC.size
    if length > MAX_FRAME_BYTES:
        return None, 0, "corrupt segment header (length)", False
    if len(buf) < end:
        return None, 0, None, False
    body = buf[_HEADER_FIXED.size : end - _CRC.size]
    (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
    if crc != _crc32(buf[8 : _HEADER_FIXED.size] + body):
        return None, 0, "corrupt segment header (CRC mismatch)", False
    if version not in READABLE_VERSIONS:
        return None, 0, f"spool format version {version}; this reader knows versions 1 and {FORMAT_VERSION}", True
    try:
        meta = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, 0, "corrupt segment header (metadata is not JSON)", False
    if not isinstance(meta, dict):
        return None, 0, "corrupt segment header (metadata is not an object)", False
    return meta, end, None, False


def _frame_at(buf: bytes, pos: int) -> tuple[str, int]:
    """Classify the bytes at ``pos``: ("ok", end), ("short", 0) or ("bad", 0)."""
    if len(buf) - pos < FRAME_HEADER_SIZE:
        return ("short", 0) if SYNC.startswith(buf[pos : pos + 2]) else ("bad", 0)
    sync, kind, _flags, length, crc = _FRAME.unpack_from(buf, pos)
    if sync != SYNC or kind not in _KINDS or length > MAX_FRAME_BYTES:
        return "bad", 0
    end = pos + FRAME_HEADER_SIZE + length
    if end > len(buf):
        return "short", 0
    meta = buf[pos + 2 : pos + 8]
    if _crc32(buf[pos + FRAME_HEADER_SIZE : end], _crc32(meta)) != crc:
        return "bad", 0
    return "ok", end


def _first_frame(buf: bytes, start: int) -> int:
    """The offset of the first frame at or after ``start`` that checks out, or -1."""
    probe = buf.find(SYNC, start)
    while probe != -1 and _frame_at(buf, probe)[0] != "ok":
        probe = buf.find(SYNC, probe + 1)
    return probe


def read_segment(path: str | Path, offset: int = 0) -> SegmentRead:
    """Read the frames of one segment from ``offset`` (0, or a previous ``next_offset``).

    A damaged header does not cost the frames after it: the reader resynchronises on the
    first frame that checks out (its CRC makes a false start as unlikely as any other
    corrupt frame passing) and reports the header as ``header_corrupt``.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096) if offset else b""
            f.seek(offset)
            buf = f.read()
    except OSError as exc:
        return SegmentRead(p, None, error=f"cannot read: {exc.strerror}", next_offset=offset)
    header: dict[str, Any] | None
    header_corrupt = None
    if offset == 0:
        header, pos, problem, final = _read_header(buf)
        if final:
            return SegmentRead(p, None, error=problem)
        if header is None:
            pos = _first_frame(buf, 0)
            if pos == -1:
                if problem == _BAD_MAGIC:  # and no frame in it: nothing says it is a segment
                    return SegmentRead(p, None, error="not a meterkit spool segment (bad magic)")
                if problem is None:  # empty, or the header is still being written
                    return SegmentRead(p, None, torn=True)
                version = int.from_bytes(buf[8:10], "little")
                if version not in READABLE_VERSIONS:  # damaged, or a version whose frames are not ours
                    return SegmentRead(
                        p, None, error=f"{problem}, naming format version {version}; this reader knows 1 and 2"
                    )
                # A damaged header and nothing after it yet: wait, as for a torn tail.
                return SegmentRead(p, None, [], [Corruption(0, len(buf), problem)], torn=True, header_corrupt=problem)
            # A frame that checks out where the header should still be: the header is
            # damaged even if what is left of it looks incomplete.
            header_corrupt = problem or "corrupt segment header (incomplete)"
        base = 0
    else:
        header = _read_header(head)[0]
        base, pos = offset, 0
    result = SegmentRead(p, header, header_corrupt=header_corrupt)
    if header_corrupt:
        result.corrupt.append(Corruption(0, pos, header_corrupt))
    n = len(buf)
    while pos < n:
        status, end = _frame_at(buf, pos)
        if status == "ok":
            kind = buf[pos + 2]
            frame = Frame(base + pos, kind, bytes(buf[pos + FRAME_HEADER_SIZE : end]))
            pos = end
            if kind == KIND_SEAL:
                result.sealed = True
                if pos < n:
                    result.corrupt.append(Corruption(base + pos, n - pos, "bytes after the seal"))
                    pos = n
                break
            result.frames.append(frame)
            continue
        if status == "short":
            result.torn = True
            break
        # Corrupt: look for the next frame that checks out.
        probe = buf.find(SYNC, pos + 1)
        while probe != -1 and _frame_at(buf, probe)[0] == "bad":
            probe = buf.find(SYNC, probe + 1)
        if probe == -1:
            # Garbage up to the end: a tail torn by a crash, or bytes that will be followed
            # by good frames later. Leave it; the caller decides when the writer is gone.
            result.corrupt.append(Corruption(base + pos, n - pos, "unreadable bytes at the end"))
            result.torn = True
            break
        result.corrupt.append(Corruption(base + pos, probe - pos, "corrupt frame (bad sync, length or CRC)"))
        pos = probe
    result.next_offset = base + pos
    return result


def segments(directory: str | Path) -> list[Path]:
    """The segment files in a spool directory, oldest first (names start with ms time)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.endswith(SEGMENT_SUFFIX) and p.is_file())


def segment_pid(path: str | Path) -> int | None:
    """The writer's pid as the segment's file name gives it (``<ms>-<pid>-<writer>-<seq>``),
    or None. When the header cannot be read, the name is all that says who wrote it."""
    parts = Path(path).name.split("-")
    if len(parts) >= 4 and all(s.isascii() and s.isdigit() for s in parts[:2]):
        return int(parts[1])
    return None


def iter_records(directory: str | Path) -> Iterator[tuple[Path, Frame]]:
    """Every readable frame of every segment in ``directory`` (measurements, batches, controls)."""
    return ((seg, frame) for seg in segments(directory) for frame in read_segment(seg).frames)


def spool_bytes(directory: str | Path) -> int:
    return sum(_size(p) for p in segments(directory))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # retired meanwhile
        return 0
