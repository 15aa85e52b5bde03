"""The spool: per-process segment files of length-prefixed, CRC-checked frames.

This module is the contract between the SDK (which writes) and the agent (which reads);
``docs/spool-format.md`` describes the same bytes for people. The reader never trusts
what it reads: a torn last frame is left for later, a corrupt frame is skipped and
reported, and garbage never raises.
"""

from __future__ import annotations

import contextlib
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

FORMAT_VERSION = 1
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
_KINDS = {KIND_MEASUREMENT, KIND_CONTROL, KIND_SEAL}
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


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) if needed; tighten it if it is ours and too open."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = p.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        p.chmod(0o700)
    return p


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND) -> int:
    """Open a file readable by its owner only (0600), whatever the umask."""
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


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
        """Append already-encoded frames as one ``write``; opens or rotates as needed."""
        if self._fd >= 0 and (
            self._size + len(data) > self.max_segment_bytes
            or time.monotonic() - self._opened_at > self.max_segment_age_seconds
        ):
            self.seal()
        if self._fd < 0:
            self._open()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)
        self._size += len(data)
        self._frames += frames
        self.bytes_written += len(data)

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
        os.write(fd, header)
        self._fd, self.path, self._size, self._frames = fd, path, len(header), 0
        self._opened_at = time.monotonic()
        self.bytes_written += len(header)

    def seal(self) -> None:
        """Write the seal frame and close: the agent knows no more frames will follow."""
        if self._fd < 0:
            return
        seal = encode_frame(KIND_SEAL, orjson.dumps({"frames": self._frames}))
        try:
            os.write(self._fd, seal)
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
            self.bytes_written += len(seal)

    def abandon(self) -> None:
        """Forget an fd inherited across ``fork()`` without writing to the parent's segment."""
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
    """

    path: Path
    header: dict[str, Any] | None
    frames: list[Frame] = field(default_factory=list)
    corrupt: list[Corruption] = field(default_factory=list)
    next_offset: int = 0
    sealed: bool = False
    torn: bool = False
    error: str | None = None


def _read_header(buf: bytes) -> tuple[dict[str, Any] | None, int, str | None]:
    """Return (metadata, offset after header, error). (None, 0, None) means: too short yet."""
    if len(buf) < _HEADER_FIXED.size:
        return (
            None,
            0,
            None if MAGIC.startswith(buf[: len(MAGIC)]) else "not a meterkit spool segment",
        )
    magic, version, _reserved, length = _HEADER_FIXED.unpack_from(buf)
    if magic != MAGIC:
        return None, 0, "not a meterkit spool segment (bad magic)"
    if version != FORMAT_VERSION:
        return (
            None,
            0,
            f"spool format version {version}; this reader knows version {FORMAT_VERSION}",
        )
    end = _HEADER_FIXED.size + length + _CRC.size
    if length > MAX_FRAME_BYTES:
        return None, 0, "corrupt segment header (length)"
    if len(buf) < end:
        return None, 0, None
    body = buf[_HEADER_FIXED.size : end - _CRC.size]
    (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
    if crc != _crc32(buf[8 : _HEADER_FIXED.size] + body):
        return None, 0, "corrupt segment header (CRC mismatch)"
    try:
        meta = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, 0, "corrupt segment header (metadata is not JSON)"
    return meta, end, None


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


def read_segment(path: str | Path, offset: int = 0) -> SegmentRead:
    """Read the frames of one segment from ``offset`` (0, or a previous ``next_offset``)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096) if offset else b""
            f.seek(offset)
            buf = f.read()
    except OSError as exc:
        return SegmentRead(p, None, error=f"cannot read: {exc.strerror}", next_offset=offset)
    header: dict[str, Any] | None
    if offset == 0:
        header, pos, error = _read_header(buf)
        if error:
            return SegmentRead(p, None, error=error)
        if header is None:
            return SegmentRead(p, None, torn=True)
        base = 0
    else:
        header, _, _ = _read_header(head)
        base, pos = offset, 0
    result = SegmentRead(p, header)
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


def iter_records(directory: str | Path) -> Iterator[tuple[Path, Frame]]:
    """Every readable frame of every segment in ``directory`` (measurements and controls)."""
    for seg in segments(directory):
        for frame in read_segment(seg).frames:
            yield seg, frame


def spool_bytes(directory: str | Path) -> int:
    total = 0
    for p in segments(directory):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            continue
    return total
