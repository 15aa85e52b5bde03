"""Who corrected what, when and why: the journal's ``correction`` entries, each matched with
the deliveries of the measurements it wrote.

A correction (``meterkit correct``, ``meterkit backfill revert``) writes reversals and
replacements through the spool like any usage, and a control record naming its author,
instant, reason, the uids it corrects (``of``) and the uids it writes (``uids``); the
agent journals the record as a ``correction`` entry (:func:`..pipeline.prepare.journal_entry`)
and lists the corrections each batch delivered in the delivery's ``corrections`` rows
(:mod:`..pipeline.commit`). The measurements themselves reconcile by content like any
other (the backend stores every row, reversals included); this module answers the
auditor's other question, whether every correction announced was delivered, and where.

The record and its measurements may be journaled in either order (the control frame can
reach a later batch), so both sides are kept until the end of the walk: the delivered
correction uids (few: a correction is an exception, a whole backfill's revert the
largest) and the entries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterkit._timefmt import parse_ts

from .chain import Verdict, Walk
from .journal import expand_uids

BucketKey = tuple[str, str, str]  # (meter, account, hour)


@dataclass
class Correction:
    """One ``correction`` entry, and what became of the measurements it wrote."""

    seq: int
    id: str
    action: str
    reason: str
    by: str
    made_at: str  # when the correction was made (the record's ``at``)
    journaled_at: str  # when the agent journaled it
    of: list[str]
    uids: list[str]
    batch: str | None = None
    writer: str = ""
    #: written uid -> the bucket a delivery put it in
    delivered: dict[str, BucketKey] = field(default_factory=dict)

    @classmethod
    def of_entry(cls, entry: dict[str, Any]) -> Correction:
        batch = entry.get("batch")
        return cls(
            seq=int(entry.get("seq", 0)),
            id=str(entry.get("id", "")),
            action=str(entry.get("action", "")),
            reason=str(entry.get("reason", "")),
            by=str(entry.get("by", "")),
            made_at=str(entry.get("made_at", "")),
            journaled_at=str(entry.get("at", "")),
            of=expand_uids(entry.get("of")),
            uids=expand_uids(entry.get("uids")),
            batch=batch if isinstance(batch, str) else None,
            writer=str(entry.get("writer", "")),
        )

    @property
    def undelivered(self) -> list[str]:
        return sorted(u for u in self.uids if u not in self.delivered)

    @property
    def status(self) -> str:
        if not self.undelivered:
            return "delivered"
        return "not delivered" if not self.delivered else "partly delivered"

    def where(self) -> list[dict[str, Any]]:
        """Per (meter, account): how many of its measurements were delivered there."""
        counts = Counter((m, a) for m, a, _ in self.delivered.values())
        return [{"meter": m, "account": a, "count": n} for (m, a), n in sorted(counts.items())]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "by": self.by,
            "at": self.made_at,
            "journaled_at": self.journaled_at,
            "journal_entry": self.seq,
            "reason": self.reason,
            **({"batch": self.batch} if self.batch is not None else {}),
            "corrected": len(self.of),
            "written": len(self.uids),
            "delivered": len(self.delivered),
            "status": self.status,
            "where": self.where(),
            "hours": sorted({h for _, _, h in self.delivered.values()}),
            "of": self.of,
            "undelivered": self.undelivered,
        }


class CorrectionsView:
    """Collects ``correction`` entries and the delivered correction uids during one walk."""

    def __init__(self) -> None:
        self.entries: list[Correction] = []
        self._delivered: dict[str, int] = {}  # uid -> index in _buckets (buckets are few)
        self._buckets: list[BucketKey] = []
        self._bucket_index: dict[BucketKey, int] = {}

    def clear(self) -> None:
        """Forget everything: the walk proved none of it."""
        self.entries.clear()
        self._delivered.clear()
        self._buckets.clear()
        self._bucket_index.clear()

    def take(self, entry: dict[str, Any]) -> None:
        """Look at one proven entry (any type)."""
        kind = entry.get("type")
        if kind == "correction":
            self.entries.append(Correction.of_entry(entry))
        elif kind == "delivery" and "corrections" in entry:
            for row in entry["corrections"]:
                self._delivery_row(row)

    def _delivery_row(self, row: Any) -> None:
        try:
            key = (str(row["meter"]), str(row["account"]), str(row["hour"]))
            uids = [u for u in row["uids"] if isinstance(u, str)]
        except (KeyError, TypeError):
            return  # a proven entry was written by an agent: a row without this shape is skipped
        index = self._bucket_index.get(key)
        if index is None:
            index = self._bucket_index[key] = len(self._buckets)
            self._buckets.append(key)
        for u in uids:
            self._delivered.setdefault(u, index)

    def matched(self) -> Iterator[Correction]:
        """Every entry, with where its written uids were delivered."""
        for c in self.entries:
            c.delivered = {u: self._buckets[i] for u in c.uids if (i := self._delivered.get(u)) is not None}
            yield c

    def in_period(self, start: str, end: str, meter: str | None = None, account: str | None = None) -> list[Correction]:
        """The corrections that concern a period: made in it, or delivered into one of its
        hours (a correction made in February of January's usage belongs to January's
        reconciliation too). With a meter or account, only those delivered there, or,
        when nothing they wrote was delivered, made in the period (where they would have
        gone is unknown)."""
        start_ns, end_ns = parse_ts(start), parse_ts(end)
        out = []
        for c in self.matched():
            wanted = [
                k
                for k in c.delivered.values()
                if (meter is None or k[0] == meter) and (account is None or k[1] == account)
            ]
            into_period = any(start[:13] <= hour[:13] < end[:13] for _, _, hour in wanted)
            concerned = (meter is None and account is None) or bool(wanted) or not c.delivered
            if into_period or (concerned and _within(c.made_at, start_ns, end_ns)):
                out.append(c)
        return out


def _within(instant: str, start_ns: int, end_ns: int) -> bool:
    try:
        return start_ns <= parse_ts(instant) < end_ns
    except ValueError:
        return False


def read_corrections(path: Path, key: bytes | None) -> tuple[list[Correction], Verdict]:
    """Every correction entry of a journal the chain proves, matched with its deliveries,
    and the walk's verdict (entries past a broken link are not listed)."""
    view = CorrectionsView()
    walk = Walk(path, key)
    yielded = 0
    for _, entry in walk:
        yielded += 1
        view.take(entry)
    if walk.verdict.trusted < yielded:  # as JournalView.read: a rewrite proves none of them
        view.clear()
    return list(view.matched()), walk.verdict
