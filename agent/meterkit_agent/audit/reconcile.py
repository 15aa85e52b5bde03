"""Reconciliation: for a period, compare what the SDKs recorded, what the agent delivered
(or dead-lettered) and what the backend holds, measurement by measurement, and name every
difference.

1. The backend's per-bucket digests are fetched (in a thread) while the journal is read
   once: its chain verified against the backend's anchor (:mod:`.chain`), its totals and
   digests added up (:mod:`.journalview`).
2. Per (meter, account, hour): the count and content digest delivered against those held.
   Equal digests mean the same measurements with the same content: nothing more is read.
3. Where they differ, drill-down (:mod:`.drilldown`) names each missing, extra, altered
   and conflicting uid, and counts idempotent re-sends, which are no difference.

Only the entries the chain proves count. Entries after a broken link, past a cut the
anchor reveals, or all of a rewritten journal, are treated as never written: what the
backend holds for them is named as extra, and the journal's state is itself an
unexplained difference. Periods are whole hours: the journal counts per hour, so a
``from``/``to`` inside an hour is widened to the hour and said so.

Corrections need no rule of their own here: a reversal and a replacement are recorded
(the SDK tallies them like any write), delivered and stored like any measurement, and the
measurement they correct stays stored, so all three reconcile by content. What the report
adds is who corrected what, when and why (:mod:`.corrections`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from meterkit._timefmt import iso_ms, parse_ts

from ..contentdigest import Digest
from .backends import Backend, ReconcileError
from .chain import Anchor, Verdict
from .corrections import Correction
from .drilldown import DrillDown, Finding, Result
from .journal import JournalError, journal_id, read_key
from .journalview import BucketKey, JournalView, Row
from .originals import Originals

#: what each kind of difference means, and whether it is explained
KINDS: dict[str, tuple[str, bool]] = {
    "dropped_in_sdk": ("the SDK dropped or refused them", True),
    "dead_lettered": ("refused for good; see `meterkit dlq list`", True),
    "expired_in_spool": (
        "retired from the spool before this destination had them (service.spool_retention_hours)",
        True,
    ),
    "resent": ("delivered again with the same uid and content (replays, backfill re-runs): held once", True),
    "undelivered": ("recorded by the SDK but neither delivered nor dead-lettered (still in a spool?)", False),
    "unrecorded": ("delivered without an SDK tally (a spool segment lost, or a tally torn by a crash)", False),
    "missing_at_backend": ("delivered and acknowledged, but not in the backend; `--repair` re-sends them", False),
    "extra_at_backend": ("in the backend, but in no delivery the journal proves", False),
    "altered": ("in the backend with other content than was delivered", False),
    "conflicting": ("delivered more than once with different content under one uid", False),
    "unresolved": ("a delivery's bucket differs in ways the journal cannot pin on single measurements", False),
    "journal_broken": ("the journal's chain is broken", False),
    "journal_truncated": ("entries were cut from the end of the journal", False),
    "journal_rewritten": ("the journal was rewritten", False),
    "journal_regressed": ("the journal was cut and written on", False),
}


@dataclass
class Difference:
    kind: str
    meter: str
    account: str
    count: int
    detail: str
    explained: bool
    uids: list[dict[str, str]] = field(default_factory=list)  # each: uid, hour, detail

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("kind", "meter", "account", "count", "detail", "explained")}
        if self.uids:
            out["uids"] = self.uids
        return out


@dataclass
class Report:
    start: str
    end: str
    rows: list[Row]
    differences: list[Difference]
    notes: list[str]
    journal_entries: int
    journal: dict[str, Any] = field(default_factory=dict)
    corrections: list[Correction] = field(default_factory=list)

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if not d.explained]

    @property
    def empty(self) -> bool:
        return not self.rows and not self.unexplained

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.start,
            "to": self.end,
            "reconciled": not self.unexplained and not self.empty,
            "empty": self.empty,
            "journal": self.journal,
            "rows": [
                {
                    "meter": r.meter,
                    "account": r.account,
                    "recorded": r.recorded.count,
                    "sdk_lost": dict(r.sdk_lost),
                    "dead_lettered": r.dead_lettered.count,
                    "expired": r.expired.count,
                    "delivered": r.delivered.count,
                    "resent": r.resent,
                    "backend": r.backend,
                    "recorded_sums": r.recorded.sums,
                    "delivered_sums": r.delivered.sums,
                    "hourly_delivered": dict(sorted(r.hourly.items())),
                    "corrections": r.corrections,
                }
                for r in self.rows
            ],
            "differences": [d.as_dict() for d in self.differences],
            "corrections": [c.as_dict() for c in self.corrections],
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
    spool_dirs: Iterable[Path] = (),
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
    if not journal.exists():
        raise ReconcileError(f"the audit journal {journal} does not exist: is this the agent's state directory?")
    try:
        key = read_key(state_dir)
    except JournalError as exc:
        raise ReconcileError(str(exc)) from None
    jid = journal_id(key) if key is not None else None
    anchor = backend.anchor(jid) if jid is not None else None

    view = JournalView(journal, key, anchor, (start_h, end_h), meter, account)
    with ThreadPoolExecutor(1, thread_name_prefix="meterkit-reconcile") as pool:
        held = pool.submit(backend.buckets, start_h, end_h, meter, account)
        view.read()
        buckets = held.result()

    differing = _compare(view, buckets)
    result = DrillDown(view, backend, Originals(state_dir, spool_dirs)).run(differing) if differing else Result()
    for (m, a), n in result.resent.items():
        view.row(m, a).resent += n
    notes.extend(_journal_notes(view.verdict, jid, anchor))
    notes.extend(result.notes)
    future = sorted(h for h in view.hours_seen if h > iso_ms(time.time_ns() + 3_600_000_000_000))
    if future:
        notes.append(f"measurements are dated in the future ({', '.join(future[:3])}): a client clock is skewed")

    differences = _journal_differences(view.verdict)
    for _key, r in sorted(view.rows.items()):
        differences.extend(_classify(r))
    differences.extend(_grouped(result.findings))
    differences.extend(_unnamed(view, buckets, differing, result))
    summary = {
        "entries": view.verdict.entries,
        "trusted": view.verdict.trusted,
        "keyed_from": view.verdict.keyed_from,
        "id": jid,
        "anchor": {"seq": anchor.seq, "hash": anchor.hash, "at": anchor.at} if anchor else None,
    }
    rows = [view.rows[k] for k in sorted(view.rows)]
    corrections = view.corrections.in_period(start_h, end_h, meter, account)
    return Report(start_h, end_h, rows, differences, notes, view.verdict.trusted, summary, corrections)


def _compare(view: JournalView, buckets: list[dict[str, Any]]) -> set[BucketKey]:
    """The buckets whose count or content digest differ between journal and backend."""
    differing: set[BucketKey] = set()
    seen = set()
    for b in buckets:
        key = (b["meter"], b["account"], b["hour"])
        seen.add(key)
        view.row(key[0], key[1]).backend += int(b["count"])
        mine = view.buckets.get(key)
        try:
            theirs = Digest.from_json(b)
        except ValueError:
            differing.add(key)
            continue
        if mine is None or mine.legacy or mine.count != theirs.count or mine.digest().total != theirs.total:
            differing.add(key)
    return differing | (view.buckets.keys() - seen)


def _unnamed(
    view: JournalView, buckets: list[dict[str, Any]], differing: set[BucketKey], result: Result
) -> list[Difference]:
    """A bucket that differs but where drill-down named nothing and re-sends do not account
    for it: never let that pass as reconciled."""
    named = {f.bucket for f in result.findings}
    held = {(b["meter"], b["account"], b["hour"]): int(b["count"]) for b in buckets}
    out = []
    for key in sorted(differing - named):
        mine = view.buckets.get(key)
        delivered = mine.count if mine else 0
        resent = result.resent_at[key]
        if delivered - resent != held.get(key, 0) or not (resent or (mine and mine.legacy)):
            detail = f"{key[2]}: {delivered} delivered, {held.get(key, 0)} held, and no measurement could be named"
            out.append(Difference("unresolved", key[0], key[1], 1, detail, False))
    return out


def _grouped(findings: list[Finding]) -> list[Difference]:
    by: dict[tuple[str, str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        by[(f.kind, f.bucket[0], f.bucket[1])].append(f)
    out = []
    for (kind, m, a), found in sorted(by.items()):
        uids = [{"uid": f.uid, "hour": f.bucket[2], "detail": f.detail} for f in sorted(found, key=lambda f: f.uid)]
        out.append(Difference(kind, m, a, len(found), KINDS[kind][0], False, uids))
    return out


def _journal_differences(verdict: Verdict) -> list[Difference]:
    if verdict.ok:
        return []
    where = f" at line {verdict.line} (entry {verdict.seq})" if verdict.line else ""
    rest = (
        f"; only its first {verdict.trusted:,} entries are proven and reconciled, the rest count as never written"
        if verdict.trusted
        else "; none of it is proven: everything the backend holds counts as unexplained"
    )
    kind = f"journal_{verdict.problem or 'broken'}"
    return [
        Difference(kind, "-", "-", max(verdict.entries - verdict.trusted, 1), f"{verdict.reason}{where}{rest}", False)
    ]


def _journal_notes(verdict: Verdict, jid: str | None, anchor: Anchor | None) -> list[str]:
    notes = list(verdict.notes)
    if verdict.anchored:
        notes.append(f"journal {verdict.anchored}")
    elif jid is not None and anchor is None:
        notes.append(
            f"the backend holds no anchor for this journal ({jid}):"
            " a cut at its end shows only as usage the journal cannot explain"
        )
    return notes


def _classify(r: Row) -> list[Difference]:
    out: list[Difference] = []
    m, a = r.meter, r.account
    for reason, n in sorted(r.sdk_lost.items()):
        if n:
            out.append(Difference("dropped_in_sdk", m, a, n, f"the SDK dropped or refused {n} ({reason})", True))
    if r.dead_lettered.count:
        out.append(Difference("dead_lettered", m, a, r.dead_lettered.count, KINDS["dead_lettered"][0], True))
    if r.expired.count:
        out.append(Difference("expired_in_spool", m, a, r.expired.count, KINDS["expired_in_spool"][0], True))
    if r.resent:
        out.append(Difference("resent", m, a, r.resent, KINDS["resent"][0], True))
    # Every delivery counts here, re-sends included: a backfill run twice was recorded twice.
    undelivered = r.recorded.count - r.delivered.count - r.dead_lettered.count - r.expired.count
    if undelivered > 0:
        out.append(Difference("undelivered", m, a, undelivered, KINDS["undelivered"][0], False))
    elif undelivered < 0:
        out.append(Difference("unrecorded", m, a, -undelivered, KINDS["unrecorded"][0], False))
    return out


def period_default() -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    return iso_ms(int((now - timedelta(days=1)).timestamp() * 1e9)), iso_ms(
        int(now.timestamp() * 1e9) + 3_600_000_000_000
    )
