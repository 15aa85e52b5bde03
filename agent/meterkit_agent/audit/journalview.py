"""Reconciliation's pass over the journal: one read that verifies the chain (:mod:`.chain`)
and adds up what the proven entries say for the period.

Per (meter, account): what the SDKs recorded and lost, what was dead-lettered, what was
delivered (every delivery counted, re-sends included). Per (meter, account, hour) bucket:
the content digests of every delivery into it, summed, and where those deliveries are in
the file, so drill-down re-reads only the entries it needs. The sum counts a uid delivered
twice twice; that is what makes a re-send visible here, and drill-down (which compares
each delivery with the backend on its own) what tells an idempotent re-send from a
conflicting one. Deliveries written by an older agent carry no digest: their buckets are
always drilled into, by uid.

Corrections (reversals and replacements) are delivered measurements like any other and
count as such; the same walk also collects the ``correction`` entries and the corrections
each delivery carried (:mod:`.corrections`), for the report's corrections section.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..contentdigest import Digest, fold
from .backends import Side
from .chain import Anchor, Verdict, Walk
from .corrections import CorrectionsView
from .journal import read_entries

Key = tuple[str, str]  # (meter, account)
BucketKey = tuple[str, str, str]  # (meter, account, hour)


@dataclass
class Row:
    meter: str
    account: str
    recorded: Side = field(default_factory=Side)
    sdk_lost: Counter[str] = field(default_factory=Counter)
    dead_lettered: Side = field(default_factory=Side)
    expired: Side = field(default_factory=Side)  # given up in the spool: another destination had them
    delivered: Side = field(default_factory=Side)  # every delivery, re-sends included
    resent: int = 0  # deliveries of a uid already delivered with the same content
    backend: int = 0
    hourly: Counter[str] = field(default_factory=Counter)  # delivered per hour, for the chart
    corrections: int = 0  # of the delivered, how many were reversals or replacements


#: content digests a bucket keeps before folding them into its running sum (bounded memory)
_FOLD_EVERY = 1024


@dataclass
class JournalBucket:
    count: int = 0
    hashes: list[str] = field(default_factory=list)  # deliveries' content digests not yet folded
    folded: Digest = field(default_factory=Digest)
    legacy: bool = False  # a delivery without a digest contributed
    offsets: array[int] = field(default_factory=lambda: array("Q"))  # where those deliveries are

    def add(self, content: str) -> None:
        self.hashes.append(content)
        if len(self.hashes) >= _FOLD_EVERY:
            self.folded.merge(fold(self.hashes))
            self.hashes.clear()

    def digest(self) -> Digest:
        out = fold(self.hashes)
        out.merge(self.folded)
        return out


class JournalView:
    def __init__(
        self,
        path: Path,
        key: bytes | None,
        anchor: Anchor | None,
        period: tuple[str, str],
        meter: str | None = None,
        account: str | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.anchor = anchor
        self.start, self.end = period
        self.meter, self.account = meter, account
        self.rows: dict[Key, Row] = {}
        self.buckets: dict[BucketKey, JournalBucket] = {}
        self.hours_seen: set[str] = set()
        self._hours: dict[str, bool] = {}
        self.verdict = Verdict(False, 0, "", reason="not read yet")
        self.corrections = CorrectionsView()

    def row(self, meter: str, account: str) -> Row:
        found = self.rows.get((meter, account))
        if found is None:
            found = self.rows[(meter, account)] = Row(meter, account)
        return found

    def wanted(self, meter: str, account: str) -> bool:
        return (self.meter is None or meter == self.meter) and (self.account is None or account == self.account)

    def in_period(self, hour: str) -> bool:
        return self.start[:13] <= hour[:13] < self.end[:13]

    def read(self) -> None:
        walk = Walk(self.path, self.key, self.anchor)
        yielded = 0
        for offset, entry in walk:
            yielded += 1
            self._take(offset, entry)
        self.verdict = walk.verdict
        if self.verdict.trusted < yielded:
            # The anchor or a missing marker showed the walked entries are not proven
            # (a rewrite): nothing they say counts.
            assert self.verdict.trusted == 0, self.verdict
            self.rows.clear()
            self.buckets.clear()
            self.corrections.clear()

    def _take(self, offset: int, entry: dict[str, Any]) -> None:
        kind = entry.get("type")
        if kind == "delivery":
            self._delivery(offset, entry.get("totals", []))
            if "corrections" in entry:
                self._corrections(entry)
        elif kind == "correction":
            self.corrections.take(entry)
        elif kind == "sdk_tally":
            self._apply(entry.get("entries", []), "recorded")
        elif kind == "dead_letter":
            self._apply(entry.get("totals", []), "dead_lettered")
        elif kind == "expired":
            self._apply(entry.get("totals", []), "expired")
        elif kind == "replay":
            # Handed back by `meterkit dlq replay`: no longer dead; what was handed back
            # (possibly corrected to another meter or account) counts as recorded instead.
            self._apply(entry.get("original_totals", []), "dead_lettered", -1)
            self._apply(entry.get("original_totals", []), "recorded", -1)
            self._apply(entry.get("totals", []), "recorded")
        elif kind == "sdk_losses" and self.start <= str(entry.get("at", "")) < self.end:
            for e in entry.get("entries", []):
                m, a = str(e.get("meter")), str(e.get("account"))
                if self.wanted(m, a) or (e.get("account") is None and self.meter in (None, m) and self.account is None):
                    self.row(m, a).sdk_lost[str(e.get("reason"))] += int(e.get("count", 0))

    def _hour(self, hour: Any) -> bool:
        """Whether an hour is in the period (hours are few: each is looked at once)."""
        inside = self._hours.get(hour)
        if inside is None:
            self.hours_seen.add(str(hour))
            inside = self._hours[hour] = isinstance(hour, str) and self.in_period(hour)
        return inside

    def _rows(self, totals: Any) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """The totals rows that count here, as (meter, account, hour, row). A proven entry
        was written by an agent, so its rows have their shape; one that does not is skipped."""
        meter, account, hours = self.meter, self.account, self._hours
        for t in totals:
            try:
                m, a, hour = t["meter"], t["account"], t["hour"]
                inside = hours.get(hour)
                if inside is None:
                    inside = self._hour(hour)
            except (KeyError, TypeError):
                continue
            if inside and (meter is None or m == meter) and (account is None or a == account):
                yield m, a, hour, t

    def _delivery(self, offset: int, totals: list[dict[str, Any]]) -> None:
        # Once per totals row, of which a day can hold a million: kept lean.
        rows, buckets = self.rows, self.buckets
        for m, a, hour, t in self._rows(totals):
            count = t.get("count", 0)
            r = rows.get((m, a)) or self.row(m, a)
            delivered = r.delivered
            delivered.count += count
            if sums := t.get("sums"):
                _add_sums(delivered.sums, sums, 1)
            r.hourly[hour] = r.hourly.get(hour, 0) + count
            bucket = buckets.get((m, a, hour))
            if bucket is None:
                bucket = buckets[(m, a, hour)] = JournalBucket()
            bucket.count += count
            bucket.offsets.append(offset)
            content = t.get("content")
            if type(content) is str and len(content) == 64:
                bucket.add(content)
            else:
                bucket.legacy = True

    def _corrections(self, entry: dict[str, Any]) -> None:
        self.corrections.take(entry)
        rows = self.rows
        for m, a, _hour, t in self._rows(entry["corrections"]):
            uids = t.get("uids")
            if isinstance(uids, list):
                (rows.get((m, a)) or self.row(m, a)).corrections += len(uids)

    def _apply(self, totals: Iterable[dict[str, Any]], pick: str, sign: int = 1) -> None:
        rows = self.rows
        for m, a, _hour, t in self._rows(totals):
            side = getattr(rows.get((m, a)) or self.row(m, a), pick)
            side.count += sign * int(t.get("count", 0))
            if sums := t.get("sums"):
                _add_sums(side.sums, sums, sign)

    def entries_at(self, offsets: Iterable[int]) -> list[dict[str, Any]]:
        """The deliveries at these offsets (as the walk proved them), in journal order."""
        out = []
        with self.path.open("rb") as f:
            for offset in sorted(set(offsets)):
                f.seek(offset)
                out.append(orjson.loads(f.readline()))
        return out

    def proven(self) -> Iterator[dict[str, Any]]:
        """Every proven entry again, for a search no bucket could direct."""
        for n, (_, entry) in enumerate(read_entries(self.path)):
            if n >= self.verdict.trusted:
                return
            if isinstance(entry, dict):
                yield entry


def _add_sums(totals: dict[str, Any], sums: dict[str, Any], sign: int) -> None:
    """:meth:`Side.add`'s sums, for the hot loop: a whole-number sum past 64 bits is written
    as digits (docs/audit-journal.md)."""
    for name, value in sums.items():
        if type(value) is str:
            value = int(value)
        totals[name] = totals.get(name, 0) + sign * value
