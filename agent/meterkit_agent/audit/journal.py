"""The audit journal: one chained, append-only entry per delivered batch.

Each line of ``<state_dir>/journal.jsonl`` is a JSON object with ``seq``, ``prev`` (the
previous entry's hash), ``hash``, ``type`` and ``at``, plus what the type records:

- ``delivery``: a batch every exporter acknowledged. ``batch`` id, ``idempotency_key``,
  ``uid_digest`` (SHA-256 over its sorted uids), ``totals`` per (meter, account, hour):
  count, sums of numeric fields and the bucket's content digest (:mod:`..contentdigest`),
  ``sources``: per spool segment the writer's pid and host and the uids (compressed to
  counter ranges), ``exporters`` with their answers, and ``positions``: the checkpoint
  this batch advanced to.
- ``dead_letter``: measurements refused for good (by validation or by the backend), with
  their reason, totals and uids.
- ``sdk_tally`` / ``sdk_losses``: the SDKs' own control records, as they arrived.
- ``correction``: who corrected which measurements, when and why (a correction control
  record, :mod:`..pipeline.control`); a delivery that carried the corrections themselves
  lists their uids under ``corrections`` (:mod:`.corrections`).
- ``erasure``: a person erased from the ledger's per-person detail (``meterkit
  privacy erase``): its ``id``, ``reason``, ``by``, ``at``, the subject as a pseudonym
  (``subject_hash``, never the raw value) and the ``uids`` rewritten, at most 5,000 an
  entry (docs/privacy.md).
- ``retention``: a retention pass (``meterkit privacy retain``): its settings, cutoff
  and how many measurements it aged.
- ``replay`` / ``repair``: dead letters re-delivered, missing measurements re-sent.
- ``keyed``: the point from which entries are keyed (below).

``hash = HMAC-SHA256(key, prev + "\\n" + canonical JSON of the entry without its hash)``,
the key being ``<state_dir>/journal.key`` (created on first use, mode 0600), so an edited,
removed or reordered entry breaks the chain, and rewriting it, even recomputing every hash,
needs a secret that is not in the journal file. A journal begun by an older agent is
unkeyed (plain SHA-256, no key); the first append of this version writes a ``keyed``
marker and keys everything after it. The head (seq and hash) travels with every delivery
to the backend (``X-Meterkit-Journal-Head``), which keeps the latest as the journal's
anchor: :mod:`.chain` checks the local chain against it, so a cut or rewritten journal is
caught without anyone keeping a head by hand.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from meterkit._spool import private_dir
from meterkit._timefmt import iso_ms

GENESIS = "0" * 64
KEY_FILE = "journal.key"
#: the type of the entry from which a journal is keyed
KEYED = "keyed"
_KEYED_MARK = b'"type":"keyed"'  # how orjson writes it (no spaces): found without parsing
_SDK_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_ALL_SDK_UIDS = re.compile(r"(?:[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n)+")


def entry_hash(prev: str, entry: dict[str, Any], key: bytes | None = None) -> str:
    """The chain hash of an entry: keyed (HMAC-SHA256) when ``key`` is given."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return link_hash(prev, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), key)


def link_hash(prev: str, canonical: bytes, key: bytes | None) -> str:
    message = prev.encode() + b"\n" + canonical
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def read_key(state_dir: Path) -> bytes | None:
    """The journal's key, or None if it has none yet. Raises JournalError if unreadable."""
    path = Path(state_dir) / KEY_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"{path}: cannot read the journal key: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise JournalError(f"{path}: not a journal key (64 hex digits)")
    return key


def journal_id(key: bytes) -> str:
    """The journal's public name (anchors are kept under it), derived from its key so it
    names this chain and reveals nothing of the key."""
    return hashlib.sha256(b"meterkit journal id\n" + key).hexdigest()[:32]


def _create_key(state_dir: Path) -> bytes:
    """A new key, written 0600 and fsynced before any entry depends on it; if another
    process got there first, theirs."""
    path = Path(state_dir) / KEY_FILE
    key = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        found = read_key(state_dir)
        assert found is not None
        return found
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def has_keyed_marker(path: Path) -> bool:
    """Whether the journal holds its ``keyed`` entry (a byte search, no parsing)."""
    overlap = len(_KEYED_MARK) - 1
    try:
        with path.open("rb") as f:
            tail = b""
            while block := f.read(1 << 22):
                if _KEYED_MARK in tail + block:
                    return True
                tail = block[-overlap:]
    except FileNotFoundError:
        return False
    return False


def uid_digest(uids: Iterable[str]) -> str:
    """SHA-256 over the sorted uids, each followed by a line feed (hashed in one piece)."""
    return sorted_uid_digest(sorted(uids))


def sorted_uid_digest(ordered: list[str]) -> str:
    """:func:`uid_digest` of uids already sorted."""
    text = "\n".join(ordered) + "\n" if ordered else ""
    return hashlib.sha256(text.encode()).hexdigest()


def compress_uids(uids: Iterable[str]) -> dict[str, Any]:
    """SDK uids are a per-process prefix plus a counter: store runs, not every uid."""
    return compress_sorted_uids(sorted(set(uids)))


def compress_sorted_uids(ordered: list[str]) -> dict[str, Any]:
    """:func:`compress_uids` of distinct uids already sorted.

    When all of them are SDK uids (one pattern match over them all), a prefix's uids are
    one run exactly when its last counter minus its first is their number less one: the
    counters are distinct and, 12 lowercase hex digits wide, sort as numbers do. Only a
    prefix with gaps is walked uid by uid.
    """
    joined = "\n".join(ordered) + "\n"
    # (the length check: no uid holds a line feed that would make it two lines)
    if ordered and len(joined) == 37 * len(ordered) and _ALL_SDK_UIDS.fullmatch(joined):
        runs: dict[str, list[list[int]]] = {}
        start = 0
        while start < len(ordered):
            prefix = ordered[start][:24]
            end = bisect.bisect_left(ordered, prefix + "g", start)  # "g" sorts after every hex digit
            first, last = int(ordered[start][24:], 16), int(ordered[end - 1][24:], 16)
            runs[prefix] = [[first, last]] if last - first == end - start - 1 else _spans(ordered[start:end])
            start = end
        return {"runs": runs}
    return _compress_slowly(ordered)


def _spans(ordered: list[str]) -> list[list[int]]:
    spans: list[list[int]] = []
    for uid in ordered:
        n = int(uid[24:], 16)
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        elif not spans or spans[-1][1] != n:
            spans.append([n, n])
    return spans


def _compress_slowly(ordered: list[str]) -> dict[str, Any]:
    runs: dict[str, list[list[int]]] = {}
    other: list[str] = []
    for uid in ordered:
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


def expand_uids(compressed: Any) -> list[str]:
    """Every uid of a :func:`compress_uids` value (malformed parts are skipped)."""
    if not isinstance(compressed, dict):
        return []
    out = [u for u in compressed.get("other", []) if isinstance(u, str)]
    runs = compressed.get("runs")
    for prefix, spans in runs.items() if isinstance(runs, dict) else ():
        for span in spans if isinstance(spans, list) else ():
            if isinstance(span, list) and len(span) == 2 and all(isinstance(n, int) for n in span):
                out.extend(f"{prefix}{n:012x}" for n in range(span[0], span[1] + 1))
    return out


def contains_uid(compressed: dict[str, Any], uid: str) -> bool:
    if _SDK_UID.match(uid):
        n = int(uid[24:], 16)
        return any(a <= n <= b for a, b in compressed.get("runs", {}).get(uid[:24], []))
    return uid in compressed.get("other", [])


class Journal:
    """Appends entries, each fsynced before :meth:`append` returns."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = private_dir(state_dir)
        self.path = self.state_dir / "journal.jsonl"
        self._lock = threading.Lock()
        self._key = read_key(self.state_dir)
        self._keyed = False  # whether the file holds the keyed marker: looked up under the lock
        self._reload()

    @property
    def id(self) -> str | None:
        return journal_id(self._key) if self._key is not None else None

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
        self._anchor = (self.id, f"{self.seq}:{self.head}") if self.id and self.seq else None

    def anchor(self) -> tuple[str, str] | None:
        """(journal id, ``"<seq>:<hash>"``): the head to carry to the backend, once keyed."""
        return self._anchor

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append entries under an exclusive lock (the agent and ``meterkit reconcile
        --repair`` may both write), chaining from the entry actually last in the file. The
        first append to an unkeyed journal creates the key and writes the ``keyed`` marker."""
        if not entries:
            return
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size != self._size:
                    self._reload()
                if not self._keyed:  # another writer (dlq replay, repair) may have keyed it
                    self._key = self._key or read_key(self.state_dir)
                    self._keyed = self._key is not None and has_keyed_marker(self.path)
                if not self._keyed:
                    self._key = self._key or _create_key(self.state_dir)
                    entries = [{"type": KEYED, "journal": journal_id(self._key)}, *entries]
                lines = []
                seq, head = self.seq, self.head
                now = iso_ms(time.time_ns())
                for entry in entries:
                    seq += 1
                    full = {"seq": seq, "prev": head, "at": now, **entry}
                    canonical = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)
                    head = link_hash(full["prev"], canonical, self._key)
                    # Written with sorted keys, so a verifier hashes the line as it is (less
                    # its hash) instead of re-serialising it.
                    lines.append(orjson.dumps({**full, "hash": head}, option=orjson.OPT_SORT_KEYS) + b"\n")
                os.write(fd, b"".join(lines))
                os.fsync(fd)
                self._size = os.fstat(fd).st_size
            finally:
                os.close(fd)  # releases the lock
            self._keyed = True
            self.seq, self.head = seq, head
            self._anchor = (journal_id(self._key), f"{seq}:{head}") if self._key else None

    def tail_after(self, seq: int) -> list[dict[str, Any]]:
        """Entries with a sequence number above ``seq`` (the checkpoint file's), newest last."""
        if self.seq <= seq:
            return []
        # Read from the end: the checkpoint file lags the journal by about a second of
        # entries, and the journal may be long.
        newest_first: list[dict[str, Any]] = []
        for line in _lines_backwards(self.path):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut mid-write: no entry
            if isinstance(entry, dict):
                if int(entry.get("seq", 0)) <= seq:
                    break
                newest_first.append(entry)
        return newest_first[::-1]


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


def _lines_backwards(path: Path, block: int = 1 << 20) -> Iterator[bytes]:
    """The file's non-empty lines, last first."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        rest = b""  # the start of a line whose beginning is in an earlier block
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + rest
            end = start
            lines = data.split(b"\n")
            rest = lines[0] if start > 0 else b""
            for line in reversed(lines if start == 0 else lines[1:]):
                if line:
                    yield line
        if rest:
            yield rest


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
