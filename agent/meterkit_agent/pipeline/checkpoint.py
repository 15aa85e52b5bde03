"""The spool checkpoint: how far each segment has been acknowledged."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from meterkit._spool import private_dir

#: The checkpoint file is rewritten at most this often while batches are committed.
SAVE_INTERVAL_SECONDS = 1.0


class Checkpoint:
    """Per segment: the offset up to which every frame has been acknowledged.

    Written atomically (temp file, fsync, rename), so a crash at any moment leaves either
    the old or the new checkpoint, never half of one. The journal, appended and fsynced
    before each advance, carries every batch's positions too, and the agent re-applies
    the entries after :attr:`journal_seq` when it starts. So the file need not follow
    every batch: it is rewritten at most once a :data:`SAVE_INTERVAL_SECONDS` while
    delivery runs (each rewrite is a write, an fsync and a rename), and when it stops.
    In memory the offsets are always current.
    """

    def __init__(self, state_dir: Path, save_interval: float = SAVE_INTERVAL_SECONDS) -> None:
        self.path = private_dir(state_dir) / "checkpoint.json"
        self.save_interval = save_interval
        self._saved_at = float("-inf")
        self._lock = threading.Lock()
        #: the journal entry this checkpoint includes; later entries' positions are re-applied
        self.journal_seq = 0
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            doc = {}
        self.offsets: dict[str, int] = {k: int(v) for k, v in doc.get("offsets", {}).items()}
        self.journal_seq = int(doc.get("journal_seq", 0))

    def get(self, key: str) -> int:
        return self.offsets.get(key, 0)

    def advance(self, positions: dict[str, int], journal_seq: int | None = None, save: bool = True) -> None:
        """Move the offsets forward. ``save``: write the file, if it was not written within
        the save interval (the journal entry ``journal_seq`` already holds the positions)."""
        for key, offset in positions.items():
            if offset > self.offsets.get(key, 0):
                self.offsets[key] = offset
        if journal_seq is not None:
            self.journal_seq = max(self.journal_seq, journal_seq)
        if save and time.monotonic() - self._saved_at >= self.save_interval:
            self.save()

    def forget(self, key: str) -> None:
        if self.offsets.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        with self._lock:  # the sender's commits and the agent's stop may both save
            self._saved_at = time.monotonic()
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # never another process's half-written file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, orjson.dumps({"journal_seq": self.journal_seq, "offsets": dict(self.offsets)}))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
