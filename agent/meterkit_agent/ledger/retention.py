"""Retention: per-person detail ages out after ``per_person_days``; account totals stay.

A pass (``meterkit privacy retain``, :mod:`..cli.privacy`) rewrites, in stored
measurements older than the *cutoff*, every value that is per-person detail:

- every string value of a ``who`` field (who did it, by definition), and
- a pseudonym (``<key id>:`` and 64 hex digits, :mod:`meterkit._pseudonyms`) in any string
  category,

the way an erasure rewrites a subject's values (:mod:`.erasure`): the row's numbers, uid,
time, meter and account never change, the hash it was ingested with is kept in ``erased``
(so ``reconcile`` passes), ``str_rollup`` of its hours is rebuilt and ``dirty`` cleared
where the hour still digests to what was delivered. Aggregation comes first by
construction: the rollups already hold every total, and a pass never changes a number.

**The cutoff** is the first instant (UTC) of the calendar month that holds
``now - per_person_days``: a pass ages whole calendar months, each in one pass. Each
distinct value of a field in a month of an account becomes ``aged:<pass>:<YYYY-MM>:<n>``
(``n`` its rank among that month's values), a token nobody can link to a person: the
mapping is never stored. So what stays answerable after aging: every SUM, MIN, MAX,
COUNT, MEAN and LATEST, unchanged; UNIQUE exactly within a calendar month (the bill
period of monthly plans: a per-seat bill does not change); UNIQUE over several aged months
counts a person once per month (the link between months is what was aged out); grouping
by an aged field groups by these tokens. A measurement of an aged month that arrives after
its pass (a late backfill) is aged by a later pass with that pass's tokens, so UNIQUE for
that month may count its person twice. Detail is kept at least ``per_person_days`` and at
most a month longer.

**Billing years.** Account totals are kept for ``billing_years``: a pass reports the rows
older than that (``beyondBillingYears``) and deletes nothing in this version. Deleting
them safely needs the bills of those periods closed (:mod:`.closing`) and reconciliation
told that a period was retired rather than lost; until then the rows (numbers and uids
only, once aged) are what keeps the journal reconcilable.

Idempotent: an aged value is neither a who value to age (``aged:`` and ``erased:`` values
are left alone) nor a pseudonym, so a second pass with the same settings changes nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations as objects
# (its imports are inside :func:`register`, as in :mod:`.digests`).

import re
import time
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from ..instants import DAY_MS, HOUR_MS, civil_from_days, days_from_civil, iso, month_start_ms
from .codec import WHOLE, decode, uid_text
from .erasure import AGED_PREFIX, ERASED_PREFIX, Rewrite, Rewriter, in_transaction, rewrite_values
from .store import Ledger

if TYPE_CHECKING:
    from fastapi import FastAPI

_PSEUDONYM = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}:[0-9a-f]{64}\Z")
#: the most days and years a pass accepts (beyond is a mistake, not a policy)
MAX_DAYS = 36_600
MAX_YEARS = 100


def ages(category: str, value: str) -> bool:
    """Whether a stored string value is per-person detail a pass ages."""
    if value.startswith((AGED_PREFIX, ERASED_PREFIX)):
        return False
    return category == "who" or (len(value) <= 81 and _PSEUDONYM.match(value) is not None)


def cutoff_ms(now_ms: int, per_person_days: int) -> int:
    """The first instant not aged: the start of the UTC month holding ``now - days``."""
    return month_start_ms(now_ms - per_person_days * DAY_MS)


def _next_month(ms: int) -> int:
    return month_start_ms(month_start_ms(ms) + 32 * DAY_MS)


class Pass:
    """One retention pass over one organisation, in one transaction."""

    def __init__(self, ledger: Ledger, org: str, pass_id: str, cutoff: int, dry_run: bool) -> None:
        self.ledger, self.org, self.pass_id, self.cutoff, self.dry = ledger, org, pass_id, cutoff, dry_run

    def run(self, cur: Any, org_id: int) -> Rewriter:
        job = Rewriter(self.ledger, cur, org_id, f"retention:{self.pass_id}", self.dry)
        series = self.ledger.series(cur, self.org, None, None)
        for (s, month), (lo, hi) in sorted(self._months(cur, series).items()):
            shapes = self._shapes(cur, s, lo, hi)
            tokens = self._tokens(job, s, series[s], shapes, lo, hi)
            if not tokens:
                continue
            rewrite = self._rewrite(tokens, iso(month)[:7])
            for shape in shapes:
                job.move(s, series[s], shape, rewrite, lo, hi)
        job.scrub_conflicts(self.org, self._conflict_replace(), self.cutoff)
        job.finish(series)
        return job

    def _rewrite(self, tokens: dict[tuple[str, str], int], month: str) -> Rewrite:
        def replace(category: str, code: str, value: str) -> str | None:
            n = tokens.get((code, value)) if ages(category, value) else None
            return None if n is None else f"{AGED_PREFIX}{self.pass_id}:{month}:{n}"

        return lambda doc: rewrite_values(doc, replace)

    def _months(self, cur: Any, series: dict[int, tuple[str, str]]) -> dict[tuple[int, int], tuple[int, int]]:
        """(series, month start) -> [lo, hi) of the months before the cutoff that hold rows."""
        if not series:
            return {}
        mark = self.ledger.mark
        cur.execute(
            f"SELECT series, hour FROM hours WHERE series IN ({', '.join([mark] * len(series))})"  # noqa: S608
            f" AND hour < {mark}",
            (*series, self.cutoff // HOUR_MS),
        )
        out = {}
        for s, hour in cur.fetchall():
            month = month_start_ms(int(hour) * HOUR_MS)
            out[(int(s), month)] = (month, min(_next_month(month), self.cutoff))
        return out

    def _shapes(self, cur: Any, series: int, lo: int, hi: int) -> list[int]:
        mark = self.ledger.mark
        cur.execute(
            f"SELECT DISTINCT shape FROM measurements WHERE series = {mark} AND ts_ms >= {mark} AND ts_ms < {mark}",  # noqa: S608
            (series, lo, hi),
        )
        return sorted(int(s) for (s,) in cur.fetchall())

    def _tokens(
        self, job: Rewriter, series: int, pair: tuple[str, str], shapes: list[int], lo: int, hi: int
    ) -> dict[tuple[str, str], int]:
        """(code, value) -> its rank among the month's values of that code to age."""
        values: dict[str, set[str]] = defaultdict(set)

        def gather(doc: dict[str, Any]) -> None:
            for category, spec in doc.items():
                if type(spec) is dict and category in ("who", "what", "where", "other", "metadata"):
                    for code, value in spec.items():
                        if type(value) is str and ages(category, value):
                            values[code].add(value)

        for shape in shapes:
            if shape != WHOLE:
                gather(job.shape(job.cur, shape).template)
                continue
            for uid, ms, nums, extra in job.rows(series, WHOLE, lo, hi):
                gather(decode(uid_text(uid), *pair, int(ms), job.shape(job.cur, WHOLE), nums, extra))
        return {(code, v): n for code, found in values.items() for n, v in enumerate(sorted(found), start=1)}

    def _conflict_replace(self) -> Any:
        def replace(category: str, _code: str, value: str) -> str | None:
            return f"{AGED_PREFIX}{self.pass_id}" if ages(category, value) else None

        return replace


def retain(
    ledger: Ledger,
    org: str,
    per_person_days: int,
    billing_years: int,
    pass_id: str | None = None,
    dry_run: bool = False,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Run one pass; what it aged (or, dry, would age) and what lies beyond the billing years."""
    if not 0 <= per_person_days <= MAX_DAYS or not 1 <= billing_years <= MAX_YEARS:
        raise ValueError(f"per_person_days must be 0..{MAX_DAYS} and billing_years 1..{MAX_YEARS}")
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    pass_id = pass_id or uuid.uuid4().hex[:12]
    cutoff = cutoff_ms(now, per_person_days)
    done = in_transaction(ledger, org, Pass(ledger, org, pass_id, cutoff, dry_run).run)
    year, month, day = civil_from_days(now // DAY_MS)
    billing_cutoff = days_from_civil(year - billing_years, month, min(day, 28)) * DAY_MS
    beyond = _count_before(ledger, org, billing_cutoff)
    return {
        "id": pass_id,
        "dryRun": dry_run,
        "cutoff": iso(cutoff),
        "billingCutoff": iso(billing_cutoff),
        "beyondBillingYears": beyond,
        "deleted": 0,
        **done.answer(),
    }


def _count_before(ledger: Ledger, org: str, before_ms: int) -> int:
    """Stored rows of the organisation older than ``before_ms`` (by the hourly rollups)."""
    mark = ledger.mark
    found = ledger._all(
        f"SELECT coalesce(sum(h.count), 0) FROM hours h JOIN series s ON s.id = h.series"  # noqa: S608 - marks only
        f" WHERE s.org = {mark} AND h.hour < {mark}",
        (org, before_ms // HOUR_MS),
    )
    return int(found[0][0])


def register(app: "FastAPI", ledger: Ledger, auth: list[Any]) -> None:
    """``POST /organizations/{org}/privacy/retain``: body ``{"id", "perPersonDays",
    "billingYears", "dryRun"}``; answers what the pass aged."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from ..httpserver import BodyError, json_response, read_body

    ident = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

    @app.post("/organizations/{org_id}/privacy/retain", dependencies=auth)
    async def retain_route(org_id: str, request: Request) -> Response:
        try:
            doc = orjson.loads(await read_body(request, 16_384))
        except (BodyError, orjson.JSONDecodeError):
            doc = None
        days = doc.get("perPersonDays") if isinstance(doc, dict) else None
        years = doc.get("billingYears") if isinstance(doc, dict) else None
        pass_id = doc.get("id") if isinstance(doc, dict) else None
        if (
            type(days) is not int
            or type(years) is not int
            or not isinstance(pass_id, str)
            or not ident.match(pass_id)
            or not 0 <= days <= MAX_DAYS
            or not 1 <= years <= MAX_YEARS
        ):
            message = (
                f'body must be {{"id": id, "perPersonDays": 0..{MAX_DAYS}, "billingYears": 1..{MAX_YEARS},'
                ' "dryRun": bool}'
            )
            return json_response({"message": message}, 400)
        found = await run_in_threadpool(retain, ledger, org_id, days, years, pass_id, doc.get("dryRun") is True)
        return json_response(found)
