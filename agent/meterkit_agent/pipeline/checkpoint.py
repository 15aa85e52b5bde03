"""The spool checkpoint: how far each segment has been acknowledged."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from meterkit._spool import private_dir


class Checkpoint:
    """Per segment: the offset up to which every frame has been acknowledged.

    Written atomically (temp file, fsync, rename) after every acknowledged batch, so a
    crash at any moment leaves either the old or the new checkpoint, never half of one.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = private_dir(state_dir) / "checkpoint.json"
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
        for key, offset in positions.items():
            if offset > self.offsets.get(key, 0):
                self.offsets[key] = offset
        if journal_seq is not None:
            self.journal_seq = max(self.journal_seq, journal_seq)
        if save:
            self.save()

    def forget(self, key: str) -> None:
        if self.offsets.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, orjson.dumps({"journal_seq": self.journal_seq, "offsets": self.offsets}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
