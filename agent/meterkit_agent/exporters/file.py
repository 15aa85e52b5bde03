"""Appends JSON lines (fsynced), for debugging a pipeline.

Corrections. Each line is the measurement as the pipeline holds it, ``correction`` and
``batch`` included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from ..component import Factory, Rejected, RetryLater, Settings


class FileExporterConfig(Settings):
    path: Path


class FileExporter:
    def __init__(self, name: str, cfg: FileExporterConfig) -> None:
        self.name = name
        self.path = Path(cfg.path)
        self.last_answer = ""

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RetryLater(f"cannot write {self.path}: {exc.strerror}") from None
        self.last_answer = f"appended {len(records)} line(s) to {self.path}"
        return []

    def shutdown(self) -> None:
        pass


FACTORY = Factory(FileExporterConfig, FileExporter)
