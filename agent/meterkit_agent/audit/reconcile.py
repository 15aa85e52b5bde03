"""Reconciliation: for a period, compare what the SDKs recorded, what the agent delivered
(or dead-lettered) and what the backend holds, and name every difference.

Sources: the audit journal (SDK tallies and losses, deliveries, dead letters, replays) and
the backend's usage query. Periods are whole hours: the journal counts per hour, so a
``from``/``to`` inside an hour is widened to the hour and said so.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from meterkit._model import tally
from meterkit._spool import KIND_MEASUREMENT, read_segment, segments
from meterkit._timefmt import iso_ms, parse_ts

from .backends import Backend, ReconcileError, Side
from .journal import Journal, compress_uids, contains_uid, read_entries, verify

Key = tuple[str, str]  # (meter, account)


@dataclass
class Difference:
    kind: str  # missing_at_backend | duplicated | value_mismatch | undelivered | dropped_in_sdk | dead_lettered
    meter: str
    account: str
    count: int
    detail: str
    explained: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "meter", "account", "count", "detail", "explained")}


@dataclass
class Row:
    meter: str
    account: str
    recorded: Side = field(default_factory=Side)
    sdk_lost: Counter[str] = field(default_factory=Counter)
    dead_lettered: Side = field(default_factory=Side)
    delivered: Side = field(default_factory=Side)
    backend: Side = field(default_factory=Side)
    hourly: Counter[str] = field(default_factory=Counter)  # delivered per hour, for the chart


@dataclass
class Report:
    start: str
    end: str
    rows: list[Row]
    differences: list[Difference]
    notes: list[str]
    journal_entries: int

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if not d.explained]

    @property
    def empty(self) -> bool:
        return not self.rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.start,
            "to": self.end,
            "reconciled": not self.unexplained and not self.empty,
            "empty": self.empty,
            "rows": [
                {
                    "meter": r.meter,
                    "account": r.account,
                    "recorded": r.recorded.count,
                    "sdk_lost": dict(r.sdk_lost),
                    "dead_lettered": r.dead_lettered.count,
                    "delivered": r.delivered.count,
                    "backend": r.backend.count,
                    "recorded_sums": r.recorded.sums,
                    "delivered_sums": r.delivered.sums,
                    "backend_sums": r.backend.sums,
                    "hourly_delivered": dict(sorted(r.hourly.items())),
                }
                for r in self.rows
            ],
            "differences": [d.as_dict() for d in self.differences],
            "notes": self.notes,
        }


def hour_floor(text: str) -> str:
    ns = parse_ts(text)
    return iso_ms(ns - ns % 3_600_000_000_000)


def hour_ceil(text: str) -> str:
    ns = parse_ts(text)
    rest = ns % 3_600_000_000_000
    return iso_ms(ns if rest == 0 else ns - rest + 3_600_000_000_000)


def reconcile(
    state_dir: Path,
    backend: Backend,
    start: str,
    end: str,
    meter: str | None = None,
    account: str | None = None,
) -> Report:
    notes: list[str] = []
    try:
        start_h, end_h = hour_floor(start), hour_ceil(end)
    except ValueError as exc:
        raise ReconcileError(f"bad period: {exc}") from None
    if start_h >= end_h:
        raise ReconcileError(f"empty period: from {start} is not before to {end}")
    if (start_h, end_h) != (iso_ms(parse_ts(start)), iso_ms(parse_ts(end))):
        notes.append(f"the journal counts whole hours: the period is widened to {start_h} .. {end_h}")

    journal = state_dir / "journal.jsonl"
    verdict = verify(journal)
    if not verdict.ok:
        where = f" at line {verdict.line}" if verdict.line else ""
        raise ReconcileError(
            f"the audit journal {journal} is broken{where}: {verdict.reason}; nothing can be proven from it"
        )

    rows: dict[Key, Row] = {}

    def row(m: str, a: str) -> Row:
        if (m, a) not in rows:
            rows[(m, a)] = Row(m, a)
        return rows[(m, a)]

    def wanted(m: str, a: str) -> bool:
        return (meter is None or m == meter) and (account is None or a == account)

    future_limit = iso_ms(time.time_ns() + 3_600_000_000_000)
    future: set[str] = set()

    def in_period(hour: str) -> bool:
        if hour > future_limit:
            future.add(hour)
        return start_h[:13] <= hour[:13] < end_h[:13]

    def apply(entries: Iterable[dict[str, Any]], pick: str, sign: int = 1) -> None:
        for t in entries:
            m, a, hour = str(t.get("meter")), str(t.get("account")), str(t.get("hour", ""))
            if not wanted(m, a) or not in_period(hour):
                continue
            r = row(m, a)
            side = getattr(r, pick)
            sums = {k: int(v) if isinstance(v, str) else v for k, v in (t.get("sums") or {}).items()}
            side.add(sign * int(t.get("count", 0)), {k: sign * v for k, v in sums.items()})
            if pick == "delivered":
                r.hourly[hour] += int(t.get("count", 0))

    for _, entry in read_entries(journal):
        kind = entry.get("type")
        if kind == "sdk_tally":
            apply(entry.get("entries", []), "recorded")
        elif kind == "delivery":
            apply(entry.get("totals", []), "delivered")
        elif kind == "dead_letter":
            apply(entry.get("totals", []), "dead_lettered")
        elif kind == "replay":
            # Handed back by `meterkit dlq replay`: no longer dead; what was handed back
            # (possibly corrected to another meter or account) counts as recorded instead.
            apply(entry.get("original_totals", []), "dead_lettered", sign=-1)
            apply(entry.get("original_totals", []), "recorded", sign=-1)
            apply(entry.get("totals", []), "recorded")
        elif kind == "sdk_losses":
            at = str(entry.get("at", ""))
            if not (start_h <= at < end_h):
                continue
            for e in entry.get("entries", []):
                m, a = str(e.get("meter")), str(e.get("account"))
                if wanted(m, a) or (e.get("account") is None and (meter is None or m == meter) and account is None):
                    row(m, a).sdk_lost[str(e.get("reason"))] += int(e.get("count", 0))
    if future:
        notes.append(
            f"measurements are dated in the future ({', '.join(sorted(future)[:3])}): a client clock is skewed"
        )

    meters = sorted({m for m, _ in rows} | ({meter} if meter else set()))
    for m in meters:
        fields = sorted({f for (mm, _), r in rows.items() if mm == m for f in (*r.recorded.sums, *r.delivered.sums)})
        for a, side in backend.totals(m, account, start_h, end_h, fields).items():
            if wanted(m, a):
                row(m, a).backend = side

    differences: list[Difference] = []
    for _key, r in sorted(rows.items()):
        differences.extend(_classify(r))
    return Report(start_h, end_h, [rows[k] for k in sorted(rows)], differences, notes, verdict.entries)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _classify(r: Row) -> list[Difference]:
    out: list[Difference] = []
    m, a = r.meter, r.account
    for reason, n in sorted(r.sdk_lost.items()):
        if n:
            out.append(Difference("dropped_in_sdk", m, a, n, f"the SDK dropped or refused {n} ({reason})", True))
    if r.dead_lettered.count:
        out.append(
            Difference("dead_lettered", m, a, r.dead_lettered.count, "refused for good; see `meterkit dlq list`", True)
        )
    undelivered = r.recorded.count - r.delivered.count - r.dead_lettered.count
    if undelivered > 0:
        out.append(
            Difference(
                "undelivered",
                m,
                a,
                undelivered,
                "recorded by the SDK but neither delivered nor dead-lettered (still in a spool?)",
                False,
            )
        )
    elif undelivered < 0:
        out.append(
            Difference(
                "unrecorded",
                m,
                a,
                -undelivered,
                "delivered without an SDK tally (a spool segment lost, or a tally torn by a crash)",
                False,
            )
        )
    gap = r.delivered.count - r.backend.count
    if gap > 0:
        out.append(
            Difference(
                "missing_at_backend",
                m,
                a,
                gap,
                "delivered and acknowledged, but not in the backend; `--repair` re-sends them",
                False,
            )
        )
    elif gap < 0:
        out.append(Difference("duplicated", m, a, -gap, "the backend holds more than was delivered", False))
    if gap == 0:
        for name in sorted(set(r.delivered.sums) | set(r.backend.sums)):
            want, have = r.delivered.sums.get(name, 0), r.backend.sums.get(name, 0)
            if not _close(want, have):
                out.append(
                    Difference("value_mismatch", m, a, 1, f"{name}: delivered {want:g}, backend holds {have:g}", False)
                )
    return out


@dataclass
class RepairResult:
    resent: int = 0
    refused: int = 0
    unrecoverable: dict[Key, int] = field(default_factory=dict)


def repair(state_dir: Path, report: Report, backend: Backend, exporter: Any, spool_dirs: list[Path]) -> RepairResult:
    """Re-send measurements the journal says were delivered but the backend lacks, from the
    spool segments still on disk (live or retained). Uids are unchanged, so a repair can
    never double count."""

    result = RepairResult()
    missing = [d for d in report.differences if d.kind == "missing_at_backend"]
    if not missing:
        return result
    delivered = [e for _, e in read_entries(state_dir / "journal.jsonl") if e.get("type") == "delivery"]
    folders = [*spool_dirs, state_dir / "retained", *sorted((state_dir / "http-spool").glob("*"))]
    # Read the segments on disk once: every measurement of the period for the keys in question.
    wanted = {(d.meter, d.account) for d in missing}
    on_disk: dict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
    for folder in folders:
        for seg in segments(folder):
            for frame in read_segment(seg).frames:
                if frame.kind != KIND_MEASUREMENT:
                    continue
                m = frame.json()
                key = (m.get("meter"), m.get("account"))
                if key in wanted and report.start <= m.get("ts", "") < report.end:
                    on_disk[key][m["uid"]] = m
    resend: list[dict[str, Any]] = []
    for d in missing:
        have = backend.uids(d.meter, d.account, report.start, report.end)
        found = {
            uid: m
            for uid, m in on_disk[(d.meter, d.account)].items()
            if uid not in have
            and any(contains_uid(s.get("uids", {}), uid) for e in delivered for s in e.get("sources", []))
        }
        resend.extend(found.values())
        if len(found) < d.count:
            result.unrecoverable[(d.meter, d.account)] = d.count - len(found)
    if resend:
        refused = exporter.export(resend)
        result.refused = len(refused)
        result.resent = len(resend) - len(refused)
        Journal(state_dir).append(
            [
                {
                    "type": "repair",
                    "count": result.resent,
                    "uids": compress_uids(m["uid"] for m in resend),
                    "totals": tally(resend),
                }
            ]
        )
    return result


def period_default() -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    return iso_ms(int((now - timedelta(days=1)).timestamp() * 1e9)), iso_ms(
        int(now.timestamp() * 1e9) + 3_600_000_000_000
    )
