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

from meterkit._guard import background_error
from meterkit._spool import private_dir

from ..lease import Fenced
from ..receivers.spool import SpoolReceiver
from .feed import Destination, Feed
from .fence import Fence


def tailers_by_directory(feeds: Sequence[Feed]) -> dict[Path, list[SpoolReceiver]]:
    """Each spool directory with every tailer of it (shared feeds' and destinations' own)."""
    tailers: dict[Path, list[SpoolReceiver]] = {}
    for feed in feeds:
        for tailer in feed.receivers:
            tailers.setdefault(tailer.directory, []).append(tailer)
    return tailers


class Retirer:
    def __init__(
        self,
        feeds: Callable[[], Sequence[Feed]],
        state_dir: Path,
        retain_hours: float,
        fence: Fence | None = None,
    ) -> None:
        self.feeds = feeds
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
                    feeds = self.feeds()
                    # every destination once (a shared feed's members read on their own too)
                    members = list({id(m): m for feed in feeds for m in feed.members}.values())
                    for tailers in tailers_by_directory(feeds).values():
                        self._retire(tailers, members)
            except Fenced:
                return
            if self.retain_hours > 0:
                self._purge_retained()

    def _retire(self, tailers: list[SpoolReceiver], members: list[Destination]) -> None:
        """Retire the segments every tailer of one directory has acknowledged (each asks
        its own feed: a shared feed's members, or a destination reading alone)."""
        done = [{seg.key: seg for seg in tailer.retirable()} for tailer in tailers]
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
            for tailer, segs in zip(tailers, done, strict=True):
                tailer.forget(segs[key])
            for member in members:
                member.checkpoint.forget(key)

    def _purge_retained(self) -> None:
        folder = self.state_dir / "retained"
        cutoff = time.time() - self.retain_hours * 3600
        for path in folder.glob("*.mks"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
