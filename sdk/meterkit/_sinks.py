"""Where the flusher puts validated measurements: the spool, or memory (for tests)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from ._spool import (
    KIND_CONTROL,
    KIND_MEASUREMENT,
    REJECTED_DIR,
    SegmentWriter,
    encode_frame,
    open_private,
    private_dir,
    spool_bytes,
)


class SinkUnavailable(Exception):
    """The sink cannot take records now. ``reason`` is the loss reason if they end up dropped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Sink(Protocol):
    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None: ...
    def reject(self, entry: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...


class SpoolSink:
    """Frames records into this process's spool segments, within a disk budget."""

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
        self._writer_id = writer_id
        self._writer = SegmentWriter(
            directory,
            writer_id,
            max_segment_bytes=max_segment_bytes,
            max_segment_age_seconds=max_segment_age_seconds,
            fsync=fsync,
            meta={"validated": validated} if validated else None,
        )
        self._reject_fd = -1
        self._used = spool_bytes(directory)
        self._used_checked = time.monotonic()
        self.lock = threading.Lock()

    def _room_for(self, size: int) -> bool:
        if self._used + size <= self.max_spool_bytes:
            return True
        # The agent retires delivered segments; look again, at most once a second.
        now = time.monotonic()
        if now - self._used_checked >= 1.0:
            self._used, self._used_checked = spool_bytes(self.directory), now
        return self._used + size <= self.max_spool_bytes

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        dumps, frame = orjson.dumps, encode_frame
        parts = [frame(KIND_MEASUREMENT, dumps(r)) for r in records]
        parts.extend(frame(KIND_CONTROL, dumps(c)) for c in controls)
        data = b"".join(parts)
        with self.lock:
            if not self._room_for(len(data)):
                raise SinkUnavailable(
                    "spool_full",
                    f"spool {self.directory} is at its {self.max_spool_bytes}-byte limit",
                )
            before = self._writer.bytes_written
            try:
                self._writer.write(data, len(parts))
            except OSError as exc:
                raise SinkUnavailable(
                    "spool_unwritable", f"cannot write to spool {self.directory}: {exc.strerror}"
                ) from exc
            finally:
                self._used += self._writer.bytes_written - before

    def reject(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, default=repr) + b"\n"
        with self.lock:
            if self._reject_fd < 0:
                folder = private_dir(self.directory / REJECTED_DIR)
                path = folder / f"{os.getpid()}-{self._writer_id}.jsonl"
                self._reject_fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.write(self._reject_fd, line)

    def close(self) -> None:
        with self.lock:
            self._writer.seal()
            if self._reject_fd >= 0:
                os.close(self._reject_fd)
                self._reject_fd = -1

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self._writer.abandon()
        self._writer.writer_id = self._writer_id = os.urandom(4).hex()
        if self._reject_fd >= 0:
            os.close(self._reject_fd)
            self._reject_fd = -1


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
