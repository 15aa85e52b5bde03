"""A lagging destination's retention: the spool keeps a segment until every destination
reading it has it, but not forever.

A destination that is down for days would otherwise keep every segment for itself, the
spool would fill to the SDK's ``max_spool_bytes``, and then the SDK would drop new
measurements for every destination, the healthy ones included: one broken sink would cost
all of them (Fluent Bit's answer, dropping the oldest chunks, loses silently instead).
Here, a segment another destination has acknowledged and that has not been written for
``service.spool_retention_hours`` is given up by each destination still behind on it:

1. the destination is stopped (closed: a request still in flight commits nothing);
2. what it had not acknowledged in the segment is read and written off in its own
   journal as an ``expired`` entry (reason ``retention_exceeded``): how many, their uids
   and their totals per meter, account and hour, beside the SDK's tallies of the part it
   never read, so reconciliation shows them as recorded and explained, never as silently
   missing; its ``lost`` metric counts them; its checkpoint passes the segment;
3. the destination is rebuilt from its state and started again, and the segment retired.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from meterkit._frames import batch_records
from meterkit._guard import background_error
from meterkit._model import tally
from meterkit._spool import FRAME_HEADER_SIZE, KIND_BATCH, KIND_CONTROL, KIND_MEASUREMENT, read_segment

from ..audit.journal import compress_uids
from .control import control_problem
from .destination import Destination
from .feed import Feed
from .prepare import journal_entry
from .retire import tailers_by_directory

logger = logging.getLogger("meterkit.agent")

REASON = "retention_exceeded"


class Host(Protocol):
    """What the expiry needs of the agent (:class:`...agent.Agent`)."""

    destinations: list[Destination]

    def feeds(self) -> list[Feed]: ...

    def readers(self, directory: Path) -> list[Destination]: ...

    def _restart(self, old: Destination, between: Callable[[Destination], None]) -> None: ...


class Expiry:
    """Looks every ``interval`` seconds for segments a lagging destination must give up."""

    def __init__(self, host: Host, retention_hours: float, interval: float) -> None:
        self.host = host
        self.retention = retention_hours * 3600
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterkit-agent-expiry", daemon=True)

    def start(self) -> None:
        if self.retention > 0:
            self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as exc:
                background_error("spool retention", exc)

    def scan(self) -> None:
        """Give up, for each destination behind on it, every segment that another
        destination has acknowledged and that has outlived the retention."""
        cutoff = time.time() - self.retention
        due: dict[str, tuple[Destination, dict[str, Path]]] = {}
        for directory, tailers in tailers_by_directory(self.host.feeds()).items():
            readers = self.host.readers(directory)
            if len(readers) < 2:
                continue  # nobody else has it: retention never costs a sole destination
            read = {seg.key: seg for tailer in tailers for seg in tailer.read_through()}
            for key, seg in read.items():
                if not _older(seg.path, cutoff):
                    continue
                have = [d for d in readers if d.checkpoint.get(key) >= seg.last_frame_end]
                for destination in readers:
                    if have and destination not in have:
                        due.setdefault(destination.name, (destination, {}))[1][key] = seg.path
        for destination, segments in due.values():
            if not self._stop.is_set():
                self.host._restart(destination, functools.partial(write_off, segments=segments))


def _older(path: Path, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False


def write_off(destination: Destination, segments: dict[str, Path]) -> None:
    """Journal as expired what ``destination`` (stopped) had not acknowledged in each
    segment, and move its checkpoint past them."""
    for key, path in sorted(segments.items()):
        start = destination.checkpoint.get(key)
        read = read_segment(path, start)
        records, controls = _frames(read.frames, key)
        uids = [r["uid"] for r in records if isinstance(r.get("uid"), str)]
        # Up to the end of its last frame, as the others acknowledged it: the tailer then
        # finds the seal (or the writer gone) and the segment is done for it too.
        last = read.frames[-1] if read.frames else None
        positions = {key: last.offset + FRAME_HEADER_SIZE + len(last.payload) if last else start}
        entry: dict[str, Any] = {
            "type": "expired",
            "reason": REASON,
            "segment": key,
            "count": len(records),
            "totals": tally(records),
            "uids": compress_uids(uids),
            "positions": positions,
        }
        with destination.fence.writing_off():
            destination.journal.append([*controls, entry])
            destination.checkpoint.advance(positions, destination.journal.seq)
            destination.checkpoint.save()
        destination.metrics.lost.add(len(records), {"reason": REASON})
        logger.warning(
            "meterkit agent: %s: %d measurement(s) of %s expired before this destination had them"
            " (service.spool_retention_hours); journaled as %s",
            destination.name,
            len(records),
            key,
            REASON,
        )


def _frames(frames: Sequence[Any], key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The measurements of the frames, and the journal entries of their control records
    (the SDK's tallies of what the segment holds: recorded, though never delivered here)."""
    records: list[dict[str, Any]] = []
    controls: list[dict[str, Any]] = []
    for frame in frames:
        try:
            if frame.kind == KIND_BATCH:
                records.extend(batch_records(frame.payload))
                continue
            body = orjson.loads(frame.payload)
        except (ValueError, orjson.JSONDecodeError):
            continue  # neither a measurement nor a control record: nothing to count
        if frame.kind == KIND_MEASUREMENT and isinstance(body, dict):
            records.append(body)
        elif frame.kind == KIND_CONTROL and control_problem(body) is None:
            controls.append(journal_entry(body) | {"source": key})
    return records, controls
