"""Loss counts: every measurement the SDK could not spool, by reason (DESIGN.md §3).

Counted by any thread; written to the spool as a ``losses`` control record by the flusher,
and held in memory until a write that carries them succeeds (``_flusher``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from ._errors import safe_repr
from ._timefmt import iso_ms

LossKey = tuple[str, str, "str | None"]  # reason, meter, account

#: Longest meter or account text a loss key keeps (longer ones are cut, marked with "…"):
#: a loss record must stay a readable frame whatever the application passed.
MAX_KEY_TEXT = 200
#: Distinct (reason, meter, account) keys held unwritten at most; past it, further
#: accounts are counted under their meter with no account, so memory and the loss
#: record stay bounded even when every measurement names a new account.
MAX_UNWRITTEN_KEYS = 10_000
#: Entries per losses control record, so each record fits a frame.
ENTRIES_PER_RECORD = 5_000


def safe_text(value: str) -> str:
    """``value`` as plain text any JSON encoder takes: a ``str`` subclass made ``str``,
    lone surrogates escaped, cut to :data:`MAX_KEY_TEXT`."""
    text = str.__str__(value)
    if len(text) > MAX_KEY_TEXT:
        text = text[: MAX_KEY_TEXT - 1] + "…"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


__all__ = ["ENTRIES_PER_RECORD", "MAX_KEY_TEXT", "Losses", "losses_records", "meter_name", "safe_repr", "safe_text"]


def meter_name(meter: object) -> str:
    return safe_text(meter if isinstance(meter, str) else safe_repr(meter))


class Losses:
    """Measurements lost, by (reason, meter, account): all of them since start, and those
    not yet in a loss record in the spool. Any thread may count; the flusher takes the
    unwritten ones for a write and gives them back if the write fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unwritten: Counter[LossKey] = Counter()
        self._total: Counter[str] = Counter()

    def count(self, reason: str, meter: object, account: object, n: int = 1) -> None:
        key = (reason, meter_name(meter), safe_text(account) if isinstance(account, str) else None)
        with self._lock:
            if key not in self._unwritten and len(self._unwritten) >= MAX_UNWRITTEN_KEYS:
                key = (reason, key[1], None)
            self._unwritten[key] += n
            self._total[reason] += n

    def __bool__(self) -> bool:
        """Whether some are not yet written (a lock-free peek, for the flusher's fast path)."""
        return bool(self._unwritten)

    def take(self) -> Counter[LossKey]:
        if not self._unwritten:
            return Counter()
        with self._lock:
            taken, self._unwritten = self._unwritten, Counter()
        return taken

    def give_back(self, taken: Counter[LossKey]) -> None:
        with self._lock:
            self._unwritten.update(taken)

    def unwritten(self) -> int:
        with self._lock:
            return sum(self._unwritten.values())

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._total)


def losses_records(taken: Counter[LossKey]) -> list[dict[str, Any]]:
    """The control records for loss counts (``docs/spool-format.md``): one, or several of
    :data:`ENTRIES_PER_RECORD` entries each, so every record fits a frame."""
    at = iso_ms(time.time_ns())
    entries = [{"reason": r, "meter": m, "account": a, "count": n} for (r, m, a), n in taken.items()]
    return [
        {"type": "losses", "at": at, "entries": entries[i : i + ENTRIES_PER_RECORD]}
        for i in range(0, len(entries), ENTRIES_PER_RECORD)
    ]
