"""Retiring segments: a segment fully read and fully acknowledged by every destination
that reads its directory is deleted, or moved to ``<state_dir>/retained`` for
``service.retain_segments_hours`` so ``reconcile --repair`` can re-send from it.

Each destination's sender calls the one :class:`Retirer` after its commits; a segment
goes only when the last destination reading it has acknowledged it, so a destination
that is down keeps the spool's segments for itself without holding up the others."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meterkit._guard import background_error
from meterkit._spool import private_dir

from ..lease import Fenced
from ..receivers.spool import SpoolReceiver
from .fence import Fence

if TYPE_CHECKING:
    from .destination import Destination


def readers_by_directory(destinations: Sequence[Destination]) -> dict[Path, list[tuple[Destination, SpoolReceiver]]]:
    """Each spool directory with every destination's tailer of it."""
    readers: dict[Path, list[tuple[Destination, SpoolReceiver]]] = {}
    for destination in destinations:
        for tailer in destination.receivers:
            readers.setdefault(tailer.directory, []).append((destination, tailer))
    return readers


class Retirer:
    def __init__(
        self,
        destinations: Callable[[], Sequence[Destination]],
        state_dir: Path,
        retain_hours: float,
        fence: Fence | None = None,
    ) -> None:
        self.destinations = destinations
        self.fence = fence or Fence()
        self.state_dir = state_dir
        self.retain_hours = retain_hours
        self._lock = threading.Lock()  # every destination's sender calls in

    def __call__(self) -> None:
        # Under the lease's commit lock, as a commit: a leader that lost the lease neither
        # deletes segments nor rewrites the checkpoints the new leader has read.
        with self._lock:
            try:
                with self.fence.committing():
                    for readers in readers_by_directory(self.destinations()).values():
                        self._retire(readers)
            except Fenced:
                return
            if self.retain_hours > 0:
                self._purge_retained()

    def _retire(self, readers: list[tuple[Destination, SpoolReceiver]]) -> None:
        """Retire the segments every reader of one directory has acknowledged."""
        done = [{seg.key: seg for seg in tailer.retirable()} for _, tailer in readers]
        for key in set(done[0]).intersection(*done[1:]):
            seg = done[0][key]
            try:
                if self.retain_hours > 0:
                    target = private_dir(self.state_dir / "retained")
                    shutil.move(str(seg.path), target / seg.path.name)
                else:
                    seg.path.unlink(missing_ok=True)
            except OSError as exc:
                background_error("segment retirement", exc)
                continue
            for (destination, tailer), segs in zip(readers, done, strict=True):
                tailer.forget(segs[key])
                destination.checkpoint.forget(key)

    def _purge_retained(self) -> None:
        folder = self.state_dir / "retained"
        cutoff = time.time() - self.retain_hours * 3600
        for path in folder.glob("*.mks"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
