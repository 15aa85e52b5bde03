"""Where a measurement's original content can still be found: the spool segments on disk
(the SDKs' live spools, the agent's retained segments, its receivers' spools, the replay
spool) and the dead-letter store.

What is found is a candidate, not a proof: the agent's processors (derive, enrich) may
have changed a measurement between the spool and the backend. Drill-down uses a candidate
only where it makes the delivery's journaled digest come out right, and ``repair`` only
re-sends measurements whose uids the journal says were delivered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from meterkit._frames import batch_records
from meterkit._model import content_hash
from meterkit._spool import KIND_BATCH, KIND_MEASUREMENT, Frame, read_segment, segments

# The agent's own spools under its state directory (see pipeline/retire.py, receivers/).
_STATE_SPOOLS = ("retained", "replay-spool")
_RECEIVER_SPOOLS = ("http-spool", "otlp-spool")


class Originals:
    def __init__(self, state_dir: Path, spool_dirs: Iterable[Path] = ()) -> None:
        self.state_dir = state_dir
        self.folders = [Path(p) for p in spool_dirs] + [state_dir / name for name in _STATE_SPOOLS]
        for name in _RECEIVER_SPOOLS:
            self.folders.extend(sorted((state_dir / name).glob("*")))
        self._found: dict[str, dict[str, dict[str, Any]]] = {}  # uid -> content hash -> measurement
        self._looked: set[str] = set()

    def versions(self, uids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """uid -> {content hash: measurement} for every version found on disk. Reads the
        spools once per call for the uids not looked up before."""
        uids = list(uids)
        wanted = {u for u in uids if u not in self._looked}
        if wanted:
            for m in self._scan(wanted):
                self._found.setdefault(m["uid"], {})[content_hash(m)] = m
            self._looked |= wanted
        return {u: self._found[u] for u in uids if u in self._found}

    def _scan(self, wanted: set[str]) -> Iterable[dict[str, Any]]:
        for folder in self.folders:
            for seg in segments(folder):
                for frame in read_segment(seg).frames:
                    for m in _measurements(frame):
                        if isinstance(m, dict) and m.get("uid") in wanted:
                            yield m
        db = self.state_dir / "deadletter.db"
        if not db.exists():
            return
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for uid, body in conn.execute("SELECT uid, body FROM dead_letters WHERE uid IS NOT NULL"):
                if uid in wanted:
                    m = orjson.loads(body)
                    if isinstance(m, dict):
                        yield m
        except sqlite3.Error:
            return
        finally:
            conn.close()


def _measurements(frame: Frame) -> list[Any]:
    """A measurement frame's measurement, or a batch frame's (as the agent reads them)."""
    try:
        if frame.kind == KIND_MEASUREMENT:
            return [frame.json()]
        if frame.kind == KIND_BATCH:
            return batch_records(frame.payload)
    except (orjson.JSONDecodeError, ValueError):
        pass  # corrupt content: not a candidate
    return []


def differences(original: dict[str, Any], held: Any) -> str:
    """What differs between a measurement as delivered and as the backend holds it, field
    by field: ``measure.bytes 5 -> 1005, account acme -> globex``."""
    if not isinstance(held, dict):
        return "the backend's row is not a measurement"
    parts: list[str] = []
    for key in sorted(set(original) | set(held)):
        a, b = original.get(key), held.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
            parts.extend(
                f"{key}.{k} {_show(a.get(k))} -> {_show(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            )
        elif a != b:
            parts.append(f"{key} {_show(a)} -> {_show(b)}")
    return ", ".join(parts) or "the same fields (the stored hash was changed)"


def _show(value: Any) -> str:
    return "(none)" if value is None else orjson.dumps(value).decode()
