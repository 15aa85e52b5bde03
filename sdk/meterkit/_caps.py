"""Usage caps: usage to date from the agent's balance snapshot, plus what this process
allowed since.

The snapshot (docs/limits.md) is a JSON file the agent rewrites from the ledger, by
default ``<spool_dir>/balances.json``::

    {"as_of": "2026-03-14T10:00:00Z", "fetched_at": "2026-03-14T10:00:02Z",
     "balances": [{"plan": "growth", "meter": "api_calls", "field": null,
                   "account": "acme", "period_start": "2026-03-01T00:00:00Z",
                   "value": "999120"}],
     "notified": [...]}

``value`` is the exact usage (decimal text) in the period up to ``as_of``: every
measurement with its time before ``as_of`` is in it. A decision never reads the file: it
looks at the file's modification time at most once per :data:`CHECK_SECONDS` and reloads
only when it changed. A snapshot older than ``balances_max_age_seconds`` (by its
``fetched_at``), or none at all, is a fallback (``fail_open`` or ``fail_closed``).

What this process allowed since ``as_of`` is counted by the decision engine when it
allows (and, for caps on a field, by ``@meter(limit=True)`` when the call records the
field), not by ``record()``: ``record()`` is the hot path and knows no plan, and the engine
has the cap in hand already. Counts are kept per second; a newer snapshot drops those
before its ``as_of``, which it now includes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from ._plans import instant_ms

#: How often a decision may look at the snapshot file's modification time.
CHECK_SECONDS = 1.0
#: The largest snapshot read (a million balances is about 150 MiB).
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024

#: (plan, meter, field, account, period start ms)
BalanceKey = tuple[str, str, "str | None", str, int]


class Snapshot:
    __slots__ = ("as_of_ms", "balances", "fetched_at_ms")

    def __init__(self, as_of_ms: int, fetched_at_ms: int, balances: dict[BalanceKey, Decimal | int]) -> None:
        self.as_of_ms, self.fetched_at_ms, self.balances = as_of_ms, fetched_at_ms, balances


def parse_snapshot(data: bytes) -> Snapshot:
    """A snapshot from its JSON. Raises ValueError naming what is wrong."""
    doc: Any = orjson.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("balances"), list):
        raise ValueError("a balance snapshot is an object with as_of, fetched_at and a list of balances")
    balances: dict[BalanceKey, Decimal | int] = {}
    for n, entry in enumerate(doc["balances"]):
        try:
            key = (
                str(entry["plan"]),
                str(entry["meter"]),
                None if entry.get("field") is None else str(entry["field"]),
                str(entry["account"]),
                instant_ms(entry["period_start"]),
            )
            value = Decimal(str(entry["value"]))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"balances[{n}] is not a balance: {exc!r:.80}") from None
        if not value.is_finite():
            raise ValueError(f"balances[{n}].value is not a number")
        balances[key] = int(value) if value == value.to_integral_value() else value  # int: cheaper, as exact
    return Snapshot(instant_ms(doc.get("as_of")), instant_ms(doc.get("fetched_at")), balances)


class SnapshotReader:
    """The current snapshot of one file, reloaded when its modification time changes."""

    def __init__(self, path: Path, max_age_seconds: float) -> None:
        self.path, self.max_age_ms = path, int(max_age_seconds * 1000)
        self.snapshot: Snapshot | None = None
        self.problem = "no balance snapshot"
        self._mtime_ns = -1
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.listeners: list[Any] = []  # called with each newly loaded snapshot

    def current(self, now_ms: int) -> Snapshot | None:
        """The snapshot if fresh enough, else None (``problem`` says why)."""
        if time.monotonic() >= self._next_check:
            self._refresh()
        snapshot = self.snapshot
        if snapshot is None:
            return None
        if now_ms - snapshot.fetched_at_ms > self.max_age_ms:
            self.problem = "stale balance snapshot"
            return None
        return snapshot

    def _refresh(self) -> None:
        with self._lock:
            self._next_check = time.monotonic() + CHECK_SECONDS
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except OSError:
                self.snapshot, self.problem, self._mtime_ns = None, "no balance snapshot", -1
                return
            if mtime == self._mtime_ns:
                return
            try:
                with open(self.path, "rb") as f:
                    data = f.read(MAX_SNAPSHOT_BYTES + 1)
                if len(data) > MAX_SNAPSHOT_BYTES:
                    raise ValueError(f"larger than {MAX_SNAPSHOT_BYTES:,} bytes")
                snapshot = parse_snapshot(data)
            except (OSError, ValueError) as exc:
                self.snapshot, self.problem = None, f"unreadable balance snapshot ({exc!s:.80})"
                self._mtime_ns = mtime
                return
            self.snapshot, self._mtime_ns = snapshot, mtime
            for listener in self.listeners:
                listener(snapshot)

    def after_fork(self) -> None:
        """A new lock: a thread of the parent may have held the old one at the fork."""
        self._lock = threading.Lock()


class LocalUsage:
    """What this process allowed, per cap key, in one-second buckets since the snapshot."""

    def __init__(self) -> None:
        self.after_fork()
        self._buckets: dict[BalanceKey, deque[list[Any]]] = {}
        self._totals: dict[BalanceKey, Decimal | int] = {}

    def total(self, key: BalanceKey) -> Decimal | int:
        return self._totals.get(key, 0)

    def add(self, key: BalanceKey, amount: Decimal | int, now_ms: int) -> None:
        second = now_ms // 1000
        self._acquire()  # not `with`: its special-method lookups cost 0.1 µs, on every capped decision
        try:
            buckets = self._buckets.get(key)
            if buckets is None:
                buckets = self._buckets[key] = deque()
            if buckets and buckets[-1][0] == second:
                buckets[-1][1] += amount
            else:
                buckets.append([second, amount])
            self._totals[key] = self._totals.get(key, 0) + amount
        finally:
            self._release()

    def drop_before(self, snapshot: Snapshot) -> None:
        """Forget what a new snapshot includes: buckets that ended at or before its as_of."""
        cutoff = snapshot.as_of_ms // 1000  # a bucket [s, s+1) s is wholly before as_of when s < cutoff
        with self._lock:
            for key in list(self._buckets):
                buckets = self._buckets[key]
                while buckets and buckets[0][0] < cutoff:
                    self._totals[key] -= buckets.popleft()[1]
                if not buckets:
                    del self._buckets[key], self._totals[key]

    def after_fork(self) -> None:
        """A new lock (a thread of the parent may have held the old one at the fork)."""
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
