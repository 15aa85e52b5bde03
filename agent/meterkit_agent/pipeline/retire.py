"""Retiring segments: a segment fully read and fully acknowledged is deleted, or moved to
``<state_dir>/retained`` for ``service.retain_segments_hours`` so ``reconcile --repair``
can re-send from it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from meterkit._guard import background_error
from meterkit._spool import private_dir

from ..receivers.spool import SpoolReceiver
from .checkpoint import Checkpoint


class Retirer:
    def __init__(
        self, tailers: list[SpoolReceiver], checkpoint: Checkpoint, state_dir: Path, retain_hours: float
    ) -> None:
        self.tailers = tailers
        self.checkpoint = checkpoint
        self.state_dir = state_dir
        self.retain_hours = retain_hours

    def __call__(self) -> None:
        for tailer in self.tailers:
            for seg in tailer.retirable():
                try:
                    if self.retain_hours > 0:
                        target = private_dir(self.state_dir / "retained")
                        shutil.move(str(seg.path), target / seg.path.name)
                    else:
                        seg.path.unlink(missing_ok=True)
                except OSError as exc:
                    background_error("segment retirement", exc)
                    continue
                tailer.forget(seg)
                self.checkpoint.forget(seg.key)
        if self.retain_hours > 0:
            self._purge_retained()

    def _purge_retained(self) -> None:
        folder = self.state_dir / "retained"
        cutoff = time.time() - self.retain_hours * 3600
        for path in folder.glob("*.mks"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
