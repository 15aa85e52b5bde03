"""Corrections at the ledger: a stored reversal voids what it reverses, and nothing is ever
rewritten or deleted (:mod:`meterkit._corrections` makes them; the contract is issue 12's).

A reversal R of U (``"correction": {"of": U, "kind": "reversal"}``) makes every usage
answer act as if neither U nor R existed: both are written into ``voids`` (series, hour,
uid), R as soon as it is stored, U as soon as both are. The usage rollups of each hour
that gains a void (``num_rollup``, ``str_rollup``) are rebuilt from that hour's rows that
still count, in the ingest's transaction, so the rollup answers stay exact and as fast as
before; what rollups cannot answer (the parts of an hour at a period's edge, ``groupBy``,
COUNT from ``hours``) leaves out the uids ``voids`` names for those hours
(:mod:`.answers`). ``hours`` keeps counting and digesting every stored row, reversals and
voided rows included: reconciliation compares what was delivered with what is stored,
and corrections are delivered.

- Order does not matter. R before U: R is kept in ``orphans`` (org, U), and the batch that
  stores U voids it. A batch with no correction pays one index probe of ``orphans`` (an
  empty table, but for reversals still waiting; while one of its organisation waits, each
  batch's new uids are looked up in it, a few hundred at a statement).
- A replacement counts like any measurement; ``corrections`` (org, uid) → (of_uid, kind)
  keeps every correction's lineage, which ``GET .../measurements/{uid}`` answers as
  ``corrected``. Amending twice chains (U → P1 → P2): each version is reversed once.
- A reversal voids U only if it is exactly U's reversal (:func:`meterkit._corrections.reversal`
  of U as stored: every number negated, everything else equal), since it voids U whole.
  One whose U is stored (or first in the same batch) and that is not is refused, naming
  what differs (reason ``bad_correction``); so is any correction of a reversal (correct
  the original instead); the rest of its batch is stored. A U that arrives after a
  reversal that is not exactly its reversal is stored and counts; the reversal, which
  never counts, voids nothing, and the mismatch is kept as a conflict of the reversal's
  uid (``GET .../conflicts``: the stored reversal stands, the true one is the other
  content) and logged. The true reversal has the same uid, so it can no longer be stored
  (it is a conflicting re-send): U cannot be reversed at this ledger any more, which the
  conflict is there to show an operator.
  A correction stored before the reversal it corrects is voided when that reversal arrives.
- ``batches`` (org, batch, uid) lists a backfill's measurements in uid order.

Concurrency (PostgreSQL, several ledger processes). U and R may be ingested at once by two
transactions, neither seeing the other's uncommitted rows: R's would find no U, U's no
orphan, and U would stay counted. So every ingest takes a transaction-scoped advisory lock
on its organisation first, before any row lock: shared by a batch without corrections
(they never wait for each other), exclusive by a batch with one. Whichever of U's and R's
transactions takes the lock second waits for the first to commit, and its later statements
(READ COMMITTED: a snapshot per statement) see the first's rows: the void is decided by
whichever comes second, with both in view. The exclusive holder is also the only writer of
its organisation's rows while it rebuilds an hour's rollups (every series, hence every
rollup row, belongs to one organisation), so no concurrent upsert adds to a rollup it is
rebuilding. The lock comes first in every transaction, so it cannot join a deadlock cycle
with row locks. SQLite needs none of this: ``BEGIN IMMEDIATE`` serializes its writers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from meterkit._corrections import REVERSAL, correction_of, is_reversal, reversal, reversal_mismatch
from meterkit._errors import safe_repr
from meterkit._model import content_hash

from ..instants import HOUR_MS
from . import rollups
from .codec import WHOLE, WHOLE_SHAPE, Shape, decode, numbers, uid_key, uid_text
from .lineage import batch_page as batch_page  # what the API answers: .lineage
from .lineage import state as state

logger = logging.getLogger("meterkit.ledger")

#: PostgreSQL advisory lock class of an organisation's ingests (the two-key space; the
#: organisation's hashed name is the second key)
LOCK_CLASS = 0x6D6B_636F  # "mkco"
_IN_CHUNK = 500
#: Differences a refusal names at most (the rest are counted).
_SHOWN = 4


@dataclass(frozen=True)
class Refusal:
    """A measurement of a batch the ledger refused (the rest of the batch was stored)."""

    index: int
    uid: str
    reason: str
    field: str
    message: str

    def as_error(self) -> dict[str, Any]:
        """As the ingest API names a bad measurement."""
        return asdict(self)


#: A stored measurement: (series, ts_ms, the measurement as stored)
Stored = tuple[int, int, dict[str, Any]]


def marked(rows: list[Any]) -> bool:
    """Whether a batch (:data:`.ingest.Row` tuples) holds a correction or a backfilled
    measurement: both are kept in ``extra`` (:mod:`.codec`), so most rows are passed over
    by one comparison."""
    return any(r[6] is not None and ("correction" in r[8] or "batch" in r[8]) for r in rows)


def lock(cur: Any, org: str, exclusive: bool) -> None:
    """PostgreSQL: the organisation's ingest lock, until the transaction ends (see the
    module's docstring)."""
    kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    cur.execute(f"SELECT {kind}(%s, hashtext(%s))", (LOCK_CLASS, org))


def stored(cur: Any, postgres: bool, org_id: int, uids: list[str]) -> dict[str, Stored]:
    """uid -> (series, ts_ms, measurement) of those stored (this transaction's rows
    included), decoded as :mod:`.codec` stored them."""
    found: list[tuple[Any, ...]] = []
    wanted = sorted(set(uids))
    columns = "m.uid, m.series, m.ts_ms, s.meter, s.account, m.shape, m.nums, m.extra"
    for i in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[i : i + _IN_CHUNK]
        if postgres:
            cur.execute(
                f"SELECT {columns} FROM uids u"  # noqa: S608 - fixed names
                " JOIN measurements m ON m.series = u.series AND m.ts_ms = u.ts_ms AND m.uid = u.uid"
                " JOIN series s ON s.id = m.series WHERE u.org_id = %s AND u.uid = ANY(%s)",
                (org_id, chunk),
            )
        else:
            cur.execute(
                f"SELECT {columns} FROM measurements m JOIN series s ON s.id = m.series"  # noqa: S608 - marks only
                f" WHERE m.org_id = ? AND m.uid IN ({', '.join('?' * len(chunk))})",
                (org_id, *(uid_key(u) for u in chunk)),
            )
        found += cur.fetchall()
    shapes = _shapes(cur, "%s" if postgres else "?", {int(r[5]) for r in found})
    out: dict[str, Stored] = {}
    for uid, series, ms, meter, account, shape, nums, extra in found:
        text = uid_text(uid)
        out[text] = (int(series), int(ms), decode(text, meter, account, int(ms), shapes[int(shape)], nums, extra))
    return out


def _shapes(cur: Any, mark: str, ids: set[int]) -> dict[int, Shape]:
    out = {WHOLE: WHOLE_SHAPE}
    wanted = sorted(ids - {WHOLE})
    if wanted:
        cur.execute(f"SELECT id, template FROM shapes WHERE id IN ({', '.join([mark] * len(wanted))})", wanted)  # noqa: S608
        out.update({int(i): Shape.of(orjson.loads(t)) for i, t in cur.fetchall()})
    return out


def unfit(record: dict[str, Any], target: dict[str, Any]) -> str | None:
    """Why the correction ``record`` cannot correct ``target``, the measurement its ``of``
    names, or None: nothing corrects a reversal, and a reversal must be exactly
    :func:`meterkit._corrections.reversal` of ``target`` (a reversal voids its original
    whole, so it must say so in every number, at the original's time and place)."""
    uid, (of, kind) = record["uid"], correction_of(record) or ("", "")
    if is_reversal(target):
        first = (correction_of(target) or ("?", ""))[0]
        return f"{kind} {uid} corrects {of}, which is a reversal (of {first}); correct {first} instead"
    if kind != REVERSAL:
        return None
    diff = reversal_mismatch(record, target)
    if not diff:
        return None
    named = "; ".join(
        f"{name} is {safe_repr(given):.60}, {of} negated has {safe_repr(expected):.60}"
        for name, given, expected in diff[:_SHOWN]
    )
    more = f" (and {len(diff) - _SHOWN} more)" if len(diff) > _SHOWN else ""
    return f"reversal {uid} is not {of} negated: {named}{more}"


def refusals(cur: Any, postgres: bool, org_id: int, rows: list[Any], series: list[int]) -> list[Refusal]:
    """The corrections of a batch that cannot correct what their ``of`` names, stored or
    first in the batch (:func:`unfit`): every row of such a uid, by index. A correction
    whose original is not known yet is not judged here (:func:`apply` judges it when the
    original arrives)."""
    del series  # the stored measurement says its meter and account
    corrections: dict[str, int] = {}
    for i, row in enumerate(rows):
        if correction_of(row[8]) is not None:
            corrections.setdefault(row[0], i)
    if not corrections:
        return []
    firsts: dict[str, int] = {}
    for i, row in enumerate(rows):
        firsts.setdefault(row[0], i)
    ofs = {uid: (correction_of(rows[i][8]) or ("", ""))[0] for uid, i in corrections.items()}
    known = stored(cur, postgres, org_id, list(ofs.values()))
    bad: dict[str, str] = {}
    for uid, i in corrections.items():
        of = ofs[uid]
        target = known[of][2] if of in known else rows[firsts[of]][8] if of in firsts else None
        why = None if target is None else unfit(rows[i][8], target)
        if why is not None:
            bad[uid] = why
    return [Refusal(i, r[0], "bad_correction", "correction.of", bad[r[0]]) for i, r in enumerate(rows) if r[0] in bad]


def has_orphans(cur: Any, mark: str, org_id: int) -> bool:
    """Whether a reversal of this organisation waits for its original (one index probe)."""
    cur.execute(f"SELECT 1 FROM orphans WHERE org_id = {mark} LIMIT 1", (org_id,))  # noqa: S608 - a mark
    return cur.fetchone() is not None


def apply(
    cur: Any,
    postgres: bool,
    org_id: int,
    new: list[tuple[str, int, int, dict[str, Any]]],
    orphans: bool,
    shape_of: Callable[[Any, int], Shape],
) -> None:
    """Record what a batch's newly stored measurements (uid, series, ts_ms, record) correct
    or belong to, void what their reversals reverse (only when each is exactly the
    reversal of its original), and rebuild the usage rollups of the hours that gained a
    void. ``orphans``: whether reversals wait for their original."""
    mark = "%s" if postgres else "?"
    voids: set[tuple[int, int, str]] = set()
    lineage, batches, reversals = [], [], []
    for uid, series, ms, record in new:
        found = correction_of(record)
        if found is not None:
            lineage.append((org_id, uid, *found))
            if found[1] == REVERSAL:
                voids.add((series, ms // HOUR_MS, uid))  # a reversal never counts
                reversals.append((uid, series, found[0], record))
        batch = record.get("batch")
        if type(batch) is str:
            batches.append((org_id, batch, uid))
    waiting, mismatched = [], []
    if reversals:
        known = stored(cur, postgres, org_id, [of for _, _, of, _ in reversals])
        for uid, series, of, record in reversals:
            target = known.get(of)
            if target is None:
                waiting.append((org_id, of, uid, series))
            elif unfit(record, target[2]) is None:
                voids.add((target[0], target[1] // HOUR_MS, of))
            elif not is_reversal(target[2]):  # stored by a concurrent ingest after the refusals looked
                mismatched.append((record, target[2]))
        voids |= _corrections_of(cur, postgres, org_id, [uid for uid, _, _, _ in reversals])
    if orphans:
        arrived, bad = _arrived(cur, postgres, org_id, {uid: (series, ms, r) for uid, series, ms, r in new})
        voids |= arrived
        mismatched += bad
    for sql, params in (
        ("INSERT INTO corrections (org_id, uid, of_uid, kind) VALUES ({m}) ON CONFLICT DO NOTHING", lineage),
        ("INSERT INTO batches (org_id, batch, uid) VALUES ({m}) ON CONFLICT DO NOTHING", batches),
        ("INSERT INTO orphans (org_id, of_uid, uid, series) VALUES ({m}) ON CONFLICT DO NOTHING", waiting),
        ("INSERT INTO voids (series, hour, uid) VALUES ({m}) ON CONFLICT DO NOTHING", sorted(voids)),
    ):
        if params:
            cur.executemany(sql.format(m=", ".join([mark] * len(params[0]))), params)
    if mismatched:
        _mismatches(cur, mark, org_id, mismatched)
    if voids:
        rebuild(cur, postgres, sorted({(s, h) for s, h, _ in voids}), shape_of)


def _corrections_of(cur: Any, postgres: bool, org_id: int, reversals: list[str]) -> set[tuple[int, int, str]]:
    """The voids of corrections stored before the reversal they correct (a reversal is
    never corrected: such a correction never counts, once the ledger knows)."""
    mark = "%s" if postgres else "?"
    found: list[str] = []
    for i in range(0, len(reversals), _IN_CHUNK):
        chunk = reversals[i : i + _IN_CHUNK]
        cur.execute(
            f"SELECT uid FROM corrections WHERE org_id = {mark}"  # noqa: S608 - marks only
            f" AND of_uid IN ({', '.join([mark] * len(chunk))})",
            (org_id, *chunk),
        )
        found += [u for (u,) in cur.fetchall()]
    out = set()
    for uid, (series, ms, record) in stored(cur, postgres, org_id, found).items():
        logger.warning("ledger: %s corrects %s, a reversal; it counts for nothing", uid, record["correction"]["of"])
        out.add((series, ms // HOUR_MS, uid))
    return out


def _arrived(
    cur: Any, postgres: bool, org_id: int, new: dict[str, tuple[int, int, dict[str, Any]]]
) -> tuple[set[tuple[int, int, str]], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The voids of newly stored measurements whose reversal was stored first, when it is
    exactly their reversal; and the (reversal, original) pairs that are not. Their orphans
    are resolved (deleted), matched or not."""
    mark = "%s" if postgres else "?"
    uids = sorted(new)
    found = []
    for i in range(0, len(uids), _IN_CHUNK):
        chunk = uids[i : i + _IN_CHUNK]
        cur.execute(
            f"SELECT of_uid, uid FROM orphans WHERE org_id = {mark}"  # noqa: S608 - marks only
            f" AND of_uid IN ({', '.join([mark] * len(chunk))})",
            (org_id, *chunk),
        )
        found += cur.fetchall()
    if not found:
        return set(), []
    cur.executemany(
        f"DELETE FROM orphans WHERE org_id = {mark} AND of_uid = {mark} AND uid = {mark}",  # noqa: S608 - marks
        [(org_id, of, uid) for of, uid in found],
    )
    reversals = stored(cur, postgres, org_id, [uid for _, uid in found])
    voids, bad = set(), []
    for of, uid in found:
        series, ms, original = new[of]
        record = reversals[uid][2]
        if unfit(record, original) is None:
            voids.add((series, ms // HOUR_MS, of))
        elif not is_reversal(original):  # a reversal of a reversal voids itself only: nothing to report
            bad.append((record, original))
    return voids, bad


def _mismatches(cur: Any, mark: str, org_id: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Keep each stored reversal that is not exactly the reversal of its original (which
    then counts) where ``GET .../conflicts`` and reconciliation show it: a conflict of the
    reversal's uid, the stored reversal standing, the true reversal as the other content."""
    cur.execute(f"SELECT org FROM orgs WHERE id = {mark}", (org_id,))  # noqa: S608 - a mark
    org = cur.fetchone()[0]
    seen = time.time_ns() // 1_000_000
    params = []
    for record, original in pairs:
        expected = reversal(original)
        logger.warning(
            "ledger: %s, stored before %s arrived, %s; %s counts, the reversal voids nothing (GET conflicts?uid=%s)",
            record["uid"],
            original["uid"],
            unfit(record, original),
            original["uid"],
            record["uid"],
        )
        body = orjson.dumps(expected).decode()
        params.append((org, record["uid"], content_hash(expected), content_hash(record), body, seen))
    cur.executemany(
        "INSERT INTO conflicts (org, uid, other_hash, first_hash, other_body, seen_at_ms)"  # noqa: S608 - marks
        f" VALUES ({', '.join([mark] * 6)}) ON CONFLICT (org, uid, other_hash) DO NOTHING",
        params,
    )


def rebuild(cur: Any, postgres: bool, hours: list[tuple[int, int]], shape_of: Callable[[Any, int], Shape]) -> None:
    """Rebuild the usage rollups of these (series, hour) from their rows that count: every
    stored row but those ``voids`` names, read as an ingest reads them."""
    mark = "%s" if postgres else "?"
    series, ms, uids, shapes, values = [], [], [], [], []
    for s, hour in hours:
        cur.execute(f"SELECT uid FROM voids WHERE series = {mark} AND hour = {mark}", (s, hour))  # noqa: S608
        void = {u for (u,) in cur.fetchall()}
        cur.execute(
            f"SELECT uid, ts_ms, shape, nums FROM measurements WHERE series = {mark}"  # noqa: S608 - marks only
            f" AND ts_ms >= {mark} AND ts_ms < {mark}",
            (s, hour * HOUR_MS, (hour + 1) * HOUR_MS),
        )
        for uid, at, shape, nums in cur.fetchall():
            text = uid_text(uid)
            if text not in void:
                series.append(s)
                ms.append(int(at))
                uids.append(text)
                shapes.append(int(shape))
                values.append(numbers(nums))
    known = {shape: shape_of(cur, shape) for shape in set(shapes)}
    changes = rollups.Changes(series, ms, uids, shapes, values, None)
    rollups.replace_usage(cur, postgres, hours, changes, known)


def voided(cur: Any, mark: str, series: list[int], first_hour: int, end_hour: int) -> set[str]:
    """The uids voided in these series' hours ``[first_hour, end_hour)``."""
    if not series:
        return set()
    cur.execute(
        f"SELECT uid FROM voids WHERE series IN ({', '.join([mark] * len(series))})"  # noqa: S608 - marks only
        f" AND hour >= {mark} AND hour < {mark}",
        (*series, first_hour, end_hour),
    )
    return {u for (u,) in cur.fetchall()}
