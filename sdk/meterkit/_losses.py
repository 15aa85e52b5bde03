"""Loss counts: every measurement the SDK could not spool, by reason (DESIGN.md §3).

Counted by any thread; written to the spool as a ``losses`` control record by the flusher,
and held in memory until a write that carries them succeeds (``_flusher``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from ._timefmt import iso_ms

LossKey = tuple[str, str, "str | None"]  # reason, meter, account


def meter_name(meter: object) -> str:
    return meter if isinstance(meter, str) else repr(meter)


class Losses:
    """Measurements lost, by (reason, meter, account): all of them since start, and those
    not yet in a loss record in the spool. Any thread may count; the flusher takes the
    unwritten ones for a write and gives them back if the write fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unwritten: Counter[LossKey] = Counter()
        self._total: Counter[str] = Counter()

    def count(self, reason: str, meter: object, account: object, n: int = 1) -> None:
        key = (reason, meter_name(meter), account if isinstance(account, str) else None)
        with self._lock:
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


def losses_record(taken: Counter[LossKey]) -> dict[str, Any]:
    """The control record for loss counts (``docs/spool-format.md``)."""
    return {
        "type": "losses",
        "at": iso_ms(time.time_ns()),
        "entries": [{"reason": r, "meter": m, "account": a, "count": n} for (r, m, a), n in taken.items()],
    }
