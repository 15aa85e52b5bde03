"""The audit journal: one hash-chained, append-only entry per delivered batch.

Each line of ``<state_dir>/journal.jsonl`` is a JSON object with ``seq``, ``prev`` (the
previous entry's hash), ``hash``, ``type`` and ``at``, plus what the type records:

- ``delivery``: a batch every exporter acknowledged. ``batch`` id, ``idempotency_key``,
  ``uid_digest`` (SHA-256 over its sorted uids), ``totals`` per (meter, account, hour):
  count and sums of numeric fields, ``sources``: per spool segment the writer's pid and
  host and the uids (compressed to counter ranges), ``exporters`` with their answers, and
  ``positions``: the checkpoint this batch advanced to.
- ``dead_letter``: measurements refused for good (by validation or by the backend), with
  their reason, totals and uids.
- ``sdk_tally`` / ``sdk_losses``: the SDKs' own control records, as they arrived.
- ``replay`` / ``repair``: dead letters re-delivered, missing measurements re-sent.

``hash = sha256(prev + "\\n" + canonical JSON of the entry without its hash)``, so an
edited, removed or reordered entry breaks the chain at that point; :func:`verify` names it.
The head (last seq and hash) can be exported and stored elsewhere or signed
(``meterkit audit head``), which makes truncation of the tail detectable too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from meterkit._spool import private_dir
from meterkit._timefmt import iso_ms

GENESIS = "0" * 64
_SDK_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def entry_hash(prev: str, entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(prev.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def uid_digest(uids: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for uid in sorted(uids):
        digest.update(uid.encode() + b"\n")
    return digest.hexdigest()


def compress_uids(uids: Iterable[str]) -> dict[str, Any]:
    """SDK uids are a per-process prefix plus a counter: store runs, not every uid."""
    runs: dict[str, list[list[int]]] = {}
    other: list[str] = []
    for uid in sorted(uids):
        if _SDK_UID.match(uid):
            prefix, n = uid[:24], int(uid[24:], 16)
            spans = runs.setdefault(prefix, [])
            if spans and spans[-1][1] == n - 1:
                spans[-1][1] = n
            elif not spans or spans[-1][1] != n:
                spans.append([n, n])
        else:
            other.append(uid)
    out: dict[str, Any] = {}
    if runs:
        out["runs"] = runs
    if other:
        out["other"] = other
    return out


def contains_uid(compressed: dict[str, Any], uid: str) -> bool:
    if _SDK_UID.match(uid):
        n = int(uid[24:], 16)
        return any(a <= n <= b for a, b in compressed.get("runs", {}).get(uid[:24], []))
    return uid in compressed.get("other", [])


class Journal:
    """Appends entries, each fsynced before :meth:`append` returns."""

    def __init__(self, state_dir: Path) -> None:
        self.path = private_dir(state_dir) / "journal.jsonl"
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        self.seq, self.head = 0, GENESIS
        self._size = self.path.stat().st_size if self.path.exists() else 0
        last = _last_line(self.path)
        if last is not None:
            try:
                entry = orjson.loads(last)
                self.seq, self.head = int(entry["seq"]), str(entry["hash"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise JournalError(f"{self.path}: the last entry is unreadable; run `meterkit audit verify`") from None

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append entries under an exclusive lock (the agent and ``meterkit reconcile
        --repair`` may both write), chaining from the entry actually last in the file."""
        if not entries:
            return
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size != self._size:
                    self._reload()
                lines = []
                seq, head = self.seq, self.head
                now = iso_ms(time.time_ns())
                for entry in entries:
                    seq += 1
                    full = {"seq": seq, "prev": head, "at": now, **entry}
                    head = full["hash"] = entry_hash(head, full)
                    lines.append(orjson.dumps(full) + b"\n")
                os.write(fd, b"".join(lines))
                os.fsync(fd)
                self._size = os.fstat(fd).st_size
            finally:
                os.close(fd)  # releases the lock
            self.seq, self.head = seq, head

    def tail_after(self, seq: int) -> list[dict[str, Any]]:
        """Entries with a sequence number above ``seq`` (the checkpoint file's), newest last."""
        if self.seq <= seq:
            return []
        return [e for _, e in read_entries(self.path) if isinstance(e, dict) and int(e.get("seq", 0)) > seq]


class JournalError(Exception):
    pass


def _last_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return None
            block = min(size, 1 << 20)
            f.seek(size - block)
            data = f.read(block)
    except FileNotFoundError:
        return None
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[-1] if lines else None


def read_entries(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, entry or a string describing why the line is unreadable)."""
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                yield number, "truncated line (no newline): the journal was cut mid-write"
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError:
                yield number, "not JSON"


@dataclass
class Verdict:
    ok: bool
    entries: int
    head: str
    line: int | None = None
    seq: int | None = None
    reason: str = ""


def verify(path: Path, expected_head: str | None = None) -> Verdict:
    """Walk the chain; report the first broken link (edited, removed, reordered, truncated)."""
    if not path.exists():
        return Verdict(False, 0, GENESIS, reason=f"{path} does not exist")
    prev, expected_seq, count = GENESIS, 1, 0
    for line, entry in read_entries(path):
        if not isinstance(entry, dict):
            return Verdict(False, count, prev, line, expected_seq, str(entry))
        seq = entry.get("seq")
        if seq != expected_seq:
            what = "removed" if isinstance(seq, int) and seq > expected_seq else "reordered or duplicated"
            return Verdict(
                False,
                count,
                prev,
                line,
                expected_seq,
                f"expected entry {expected_seq}, found {seq}: an entry was {what}",
            )
        if entry.get("prev") != prev:
            return Verdict(False, count, prev, line, seq, "its 'prev' is not the hash of the entry before it")
        if entry.get("hash") != entry_hash(prev, entry):
            return Verdict(False, count, prev, line, seq, "its content does not match its hash: the entry was edited")
        prev, expected_seq, count = entry["hash"], expected_seq + 1, count + 1
    if expected_head is not None and expected_head != prev:
        return Verdict(
            False,
            count,
            prev,
            None,
            None,
            "the chain does not end at the exported head: entries were removed from the end",
        )
    return Verdict(True, count, prev)
