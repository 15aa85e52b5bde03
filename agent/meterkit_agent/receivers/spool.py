"""The spool receiver: tails every segment of a spool directory and hands each frame to
the delivery worker with its position (the checkpoint key and the offset it ends at).

The network receivers (``http``, ``otlp``) deliver nothing themselves: they append what
they accept to a spool of the agent's own (fsynced before they answer), which this
receiver tails, so the spool remains the only queue and a crash after a 200 loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from meterkit._guard import background_error, log_once
from meterkit._settings import default_spool_dir
from meterkit._spool import FRAME_HEADER_SIZE, read_segment, segments

from ..component import Factory, ReceiverHost, Settings

logger = logging.getLogger("meterkit.agent")


class SpoolReceiverConfig(Settings):
    directory: Path = Field(default_factory=default_spool_dir)
    poll_interval_millis: int = Field(200, gt=0)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One frame on its way: the segment it came from and where it ends there."""

    source: str  # "<spool dir>/<segment name>": the checkpoint key
    writer: str  # "<pid>@<host>" from the segment header: who recorded it
    validated: str | None  # what the writer validated its frames against (rules and catalog)
    end: int
    kind: int
    payload: bytes
    read_ns: int


@dataclass
class _Segment:
    path: Path
    key: str
    read_offset: int
    last_frame_end: int = 0
    done: bool = False  # no more frames will come: sealed, or its writer is gone
    torn_tail: bool = False
    pid: int | None = None
    host: str | None = None
    validated: str | None = None


def _writer_alive(pid: int | None, host: str | None) -> bool:
    if pid is None or host != socket.gethostname():
        return True  # cannot tell: wait for the seal
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpoolReceiver:
    def __init__(
        self,
        directory: Path,
        acknowledged: Callable[[str], int],
        emit: Callable[[Envelope], bool],
        *,
        poll_interval: float = 0.2,
        on_corrupt: Callable[[str, int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.acknowledged = acknowledged  # segment key -> offset acknowledged up to
        self.emit = emit
        self.poll_interval = poll_interval
        self.on_corrupt = on_corrupt or (lambda _key, _n: None)
        self._segments: dict[str, _Segment] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread = threading.Thread(target=self._run, name=f"spool-receiver:{self.directory}", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.poll()
            except Exception as exc:
                background_error("spool receiver", exc)
                busy = False
            if not busy:
                self._stop.wait(self.poll_interval)

    def poll(self) -> bool:
        """One pass over the directory. True if any frame was emitted."""
        busy = False
        for path in segments(self.directory):
            if self._stop.is_set():
                break
            key = f"{self.directory}/{path.name}"
            with self._lock:
                seg = self._segments.get(key)
                if seg is None:
                    start = self.acknowledged(key)
                    seg = self._segments[key] = _Segment(path, key, start, last_frame_end=start)
            if seg.done:
                continue
            result = read_segment(path, seg.read_offset)
            if result.error:
                log_once(("segment-error", key), logging.ERROR, "meterkit agent: cannot read %s: %s", key, result.error)
                continue
            if result.header and seg.pid is None:
                seg.pid, seg.host = result.header.get("pid"), result.header.get("host")
                seg.validated = result.header.get("validated")
            for c in result.corrupt:
                if not (result.torn and c is result.corrupt[-1]):
                    self.on_corrupt(key, c.length)
                    log_once(
                        ("corrupt", key, c.offset),
                        logging.ERROR,
                        "meterkit agent: %s: %s at byte %d (%d bytes skipped)",
                        key,
                        c.reason,
                        c.offset,
                        c.length,
                    )
            for frame in result.frames:
                end = frame.offset + FRAME_HEADER_SIZE + len(frame.payload)
                envelope = Envelope(
                    key, f"{seg.pid}@{seg.host}", seg.validated, end, frame.kind, frame.payload, time.time_ns()
                )
                while not self.emit(envelope):
                    if self._stop.is_set():
                        return busy
                seg.read_offset = end
                seg.last_frame_end = end
                busy = True
            if result.sealed:
                seg.read_offset = result.next_offset
                seg.done = True
            elif not result.frames and not _writer_alive(seg.pid, seg.host):
                # The writer is gone and left no seal: whatever is unreadable at the end was
                # torn by its crash. Everything readable has been emitted.
                seg.done = True
                seg.torn_tail = result.torn
                if result.torn:
                    logger.warning(
                        "meterkit agent: %s ends in a torn frame from a crashed writer (pid %s); it is abandoned",
                        key,
                        seg.pid,
                    )
        return busy

    def retirable(self) -> list[_Segment]:
        """Segments fully read and fully acknowledged."""
        with self._lock:
            return [s for s in self._segments.values() if s.done and self.acknowledged(s.key) >= s.last_frame_end]

    def forget(self, seg: _Segment) -> None:
        with self._lock:
            self._segments.pop(seg.key, None)


def _create(_cid: str, cfg: SpoolReceiverConfig, host: ReceiverHost) -> None:
    host.tail(cfg.directory, cfg.poll_interval_millis / 1000.0)


FACTORY = Factory(SpoolReceiverConfig, _create)
