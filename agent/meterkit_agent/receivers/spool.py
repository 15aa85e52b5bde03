"""The spool receiver: tails every segment of a spool directory and hands each frame to
the delivery worker with its position (the checkpoint key and the offset it ends at).

The network receivers (``http``, ``otlp``) deliver nothing themselves: they append what
they accept to a spool of the agent's own (fsynced before they answer), which this
receiver tails, so the spool remains the only queue and a crash after a 200 loses nothing.

A segment is done, and retired once acknowledged, when it is sealed or when its writer is
gone. The header names the writer (pid and host). When the header cannot be read (an empty
file, part of a header, a damaged one) the file name's pid stands in for it, on this host
(a spool directory belongs to one host), and such a segment is never judged gone before it
has been left unchanged for :data:`NEW_SEGMENT_GRACE_SECONDS`: a live writer creates the
file and writes its header in one go, so only a writer that stopped can leave it so. An
empty file is also abandoned after :data:`EMPTY_SEGMENT_TIMEOUT_SECONDS` unchanged whatever
its name says (its pid may have been reused): no writer ever goes back to one. Segments
given up on with nothing more to read are logged as warnings and counted by reason
(``meterkit.agent.segments_abandoned``): ``empty``, ``header_only``, ``incomplete_header``,
``corrupt_header``, ``torn_tail``.
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
from typing import NamedTuple

from pydantic import Field, field_validator

from meterkit._guard import background_error, log_once
from meterkit._permissions import group_id, private_dir, spool_dir
from meterkit._settings import default_spool_dir
from meterkit._spool import FRAME_HEADER_SIZE, SegmentRead, read_segment, segment_pid, segments

from ..component import Factory, ReceiverHost, Settings

logger = logging.getLogger("meterkit.agent")

#: How long a segment whose header cannot be read must have been left unchanged before
#: the pid in its name may say its writer is gone.
NEW_SEGMENT_GRACE_SECONDS = 10.0
#: How long an empty segment must have been left unchanged to be abandoned, whoever wrote it.
EMPTY_SEGMENT_TIMEOUT_SECONDS = 600.0

# Why a segment was given up on with nothing more to read (the metric's ``reason``).
_ABANDONED = {
    "empty": "it is empty",
    "header_only": "it holds a header and no frame",
    "incomplete_header": "it holds part of a header and no frame",
    "corrupt_header": "its header is damaged and no frame follows it",
    "torn_tail": "it ends in a torn frame",
}


class SpoolReceiverConfig(Settings):
    directory: Path = Field(default_factory=default_spool_dir)
    poll_interval_millis: int = Field(200, gt=0)
    # Share the directory with this group (name or id): 02770, setgid, so the application's
    # user writes and the agent's user reads (docs/spool-format.md). Unset: created 0700.
    shared_group: str | None = None

    @field_validator("shared_group")
    @classmethod
    def _known_group(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                group_id(v)
            except (KeyError, ImportError):
                raise ValueError(f"no group named {v!r} on this host") from None
        return v


class Envelope(NamedTuple):
    """One frame on its way: the segment it came from and where it ends there. A named
    tuple, not a dataclass: one is made per frame, and a tuple costs a fifth as much."""

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
    pid: int | None = None  # from the header; None while it cannot be read
    host: str | None = None
    validated: str | None = None
    header_corrupt: str | None = None

    @property
    def writer(self) -> str:
        if self.pid is not None:
            return f"{self.pid}@{self.host}"
        return f"{segment_pid(self.path)}@?"  # the header is unreadable: the name's pid, host unknown


def _writer_alive(pid: object, host: str | None) -> bool:
    if not isinstance(pid, int) or host != socket.gethostname():
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
        on_abandoned: Callable[[str, str], None] | None = None,
        new_segment_grace: float = NEW_SEGMENT_GRACE_SECONDS,
        empty_segment_timeout: float = EMPTY_SEGMENT_TIMEOUT_SECONDS,
        start: Callable[[str], int] | None = None,
    ) -> None:
        self.directory = directory
        self.acknowledged = acknowledged  # segment key -> offset acknowledged up to
        # segment key -> where to begin reading it: what was acknowledged, unless frames past
        # that were handed on another way (a destination leaving a shared feed)
        self.start_at = start or acknowledged
        self.emit = emit
        self.poll_interval = poll_interval
        self.on_corrupt = on_corrupt or (lambda _key, _n: None)
        self.on_abandoned = on_abandoned or (lambda _key, _reason: None)  # (key, reason) per segment given up on
        self.new_segment_grace = new_segment_grace
        self.empty_segment_timeout = empty_segment_timeout
        self._segments: dict[str, _Segment] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.directory.is_dir():
            private_dir(self.directory)  # a configured spool was made by `_create`, shared or not
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
                    start = self.start_at(key)
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
            if result.header_corrupt and seg.header_corrupt is None:
                seg.header_corrupt = result.header_corrupt
                logger.warning(
                    "meterkit agent: %s: %s; who wrote it is unknown, the frames after it are read all the same",
                    key,
                    result.header_corrupt,
                )
            self._report_corruption(key, result)
            writer, validated, read_ns = seg.writer, seg.validated, time.time_ns()
            for frame in result.frames:
                end = frame.offset + FRAME_HEADER_SIZE + len(frame.payload)
                envelope = Envelope(key, writer, validated, end, frame.kind, frame.payload, read_ns)
                while not self.emit(envelope):
                    if self._stop.is_set():
                        return busy
                seg.read_offset = end
                seg.last_frame_end = end
                busy = True
            if result.sealed:
                seg.read_offset = result.next_offset
                seg.done = True
            elif not result.frames and (gone := self._writer_gone(seg)):
                # The writer is gone and left no seal: whatever is unreadable at the end was
                # torn by its crash. Everything readable has been emitted.
                self._abandon(seg, result, gone)
        return busy

    def _report_corruption(self, key: str, result: SegmentRead) -> None:
        for c in result.corrupt:
            if result.torn and c is result.corrupt[-1]:
                continue  # the writer may still complete it; counted if it is abandoned
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

    def _writer_gone(self, seg: _Segment) -> str | None:
        """Why no more frames will come to ``seg``, or None while its writer may still write."""
        if seg.pid is not None:
            return None if _writer_alive(seg.pid, seg.host) else f"its writer, pid {seg.pid}, has exited"
        # No readable header: the file name and the file's age are all there is to go by.
        try:
            st = seg.path.stat()
        except FileNotFoundError:
            return None  # deleted by someone else; the next listing drops it
        unchanged = time.time() - st.st_mtime
        if unchanged < self.new_segment_grace:
            return None
        pid = segment_pid(seg.path)
        if pid is not None and not _writer_alive(pid, socket.gethostname()):
            return f"its writer, pid {pid} by its name, has exited"
        if st.st_size == 0 and unchanged >= self.empty_segment_timeout:
            return f"nothing has written to it for {unchanged:.0f} s"
        return None

    def _abandon(self, seg: _Segment, result: SegmentRead, why: str) -> None:
        seg.done = True
        seg.torn_tail = result.torn
        if result.torn and result.corrupt:
            self.on_corrupt(seg.key, result.corrupt[-1].length)  # held back while it might complete
        if seg.last_frame_end > 0 and not result.torn:
            return  # its writer stopped between two writes: every frame was read, nothing is lost
        if seg.last_frame_end == 0 and result.next_offset == 0:
            if result.header_corrupt:
                reason = "corrupt_header"
            else:
                reason = "empty" if _size(seg.path) == 0 else "incomplete_header"
        elif seg.last_frame_end == 0 and not result.torn:
            reason = "header_only"
        else:
            reason = "torn_tail"
        logger.warning(
            "meterkit agent: %s is abandoned: %s, and %s; it will be retired", seg.key, _ABANDONED[reason], why
        )
        self.on_abandoned(seg.key, reason)

    def retirable(self) -> list[_Segment]:
        """Segments fully read and fully acknowledged."""
        with self._lock:
            return [s for s in self._segments.values() if s.done and self.acknowledged(s.key) >= s.last_frame_end]

    def read_through(self) -> list[_Segment]:
        """Segments read to their end (sealed, or their writer gone), acknowledged or not."""
        with self._lock:
            return [s for s in self._segments.values() if s.done]

    def forget(self, seg: _Segment) -> None:
        with self._lock:
            self._segments.pop(seg.key, None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _create(_cid: str, cfg: SpoolReceiverConfig, host: ReceiverHost) -> None:
    # Only a missing directory is made, or one the configuration shares: an existing
    # directory's mode is its owner's choice (the SDK tightens its own private spools).
    if cfg.shared_group is not None or not cfg.directory.is_dir():
        try:
            spool_dir(cfg.directory, cfg.shared_group)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"receivers.spool: cannot prepare {cfg.directory} (shared_group {cfg.shared_group}): {exc.strerror}",
            ) from exc
    host.tail(cfg.directory, cfg.poll_interval_millis / 1000.0)


FACTORY = Factory(SpoolReceiverConfig, _create)
