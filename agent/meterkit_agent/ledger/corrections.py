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
- A reversal whose U is stored (or in the same batch) for another meter or account is
  refused, named with both (reason ``bad_correction``); the rest of its batch is stored.
  A U that arrives after its reversal for another series than the reversal's is stored and
  counts (R stays void: it reverses nothing it matches).
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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from meterkit._corrections import KINDS, REPLACEMENT, REVERSAL

from ..instants import HOUR_MS
from . import rollups
from .codec import Shape, numbers, uid_key, uid_text

#: PostgreSQL advisory lock class of an organisation's ingests (the two-key space; the
#: organisation's hashed name is the second key)
LOCK_CLASS = 0x6D6B_636F  # "mkco"
_IN_CHUNK = 500


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


def correction_of(record: dict[str, Any]) -> tuple[str, str] | None:
    """(of, kind) of a correction, or None for any other measurement."""
    found = record.get("correction")
    if type(found) is not dict:
        return None
    of, kind = found.get("of"), found.get("kind")
    return (of, kind) if type(of) is str and kind in KINDS else None


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


def locate(cur: Any, postgres: bool, org_id: int, uids: list[str]) -> dict[str, tuple[int, int]]:
    """uid -> (series, ts_ms) of those stored (this transaction's rows included)."""
    out: dict[str, tuple[int, int]] = {}
    wanted = sorted(set(uids))
    for i in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[i : i + _IN_CHUNK]
        if postgres:
            cur.execute("SELECT uid, series, ts_ms FROM uids WHERE org_id = %s AND uid = ANY(%s)", (org_id, chunk))
        else:
            marks = ", ".join("?" * len(chunk))
            cur.execute(
                f"SELECT uid, series, ts_ms FROM measurements WHERE org_id = ? AND uid IN ({marks})",  # noqa: S608
                (org_id, *(uid_key(u) for u in chunk)),
            )
        for uid, series, ms in cur.fetchall():
            out[uid_text(uid)] = (int(series), int(ms))
    return out


def refusals(cur: Any, postgres: bool, org_id: int, rows: list[Any], series: list[int]) -> list[Refusal]:
    """The reversals of a batch whose original is stored, or first in the batch, for
    another meter or account than theirs: every row of such a uid, by index."""
    reversals: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(rows):
        found = correction_of(row[8])
        if found is not None and found[1] == REVERSAL:
            reversals.setdefault(row[0], (i, found[0]))
    if not reversals:
        return []
    firsts: dict[str, int] = {}
    for i, row in enumerate(rows):
        firsts.setdefault(row[0], i)
    stored = locate(cur, postgres, org_id, [of for _, of in reversals.values()])
    names = _names(cur, postgres, {s for s, _ in stored.values()})
    bad: dict[str, str] = {}
    for uid, (i, of) in reversals.items():
        if of in stored:
            where = names[stored[of][0]]
        elif of in firsts:
            where = rows[firsts[of]][1:3]
        else:
            continue
        if tuple(where) != tuple(rows[i][1:3]):
            bad[uid] = (
                f"reversal {uid} of {of} is for meter {rows[i][1]!r}, account {rows[i][2]!r},"
                f" but {of} is stored for meter {where[0]!r}, account {where[1]!r}"
            )
    return [Refusal(i, r[0], "bad_correction", "correction.of", bad[r[0]]) for i, r in enumerate(rows) if r[0] in bad]


def _names(cur: Any, postgres: bool, ids: set[int]) -> dict[int, tuple[str, str]]:
    if not ids:
        return {}
    mark = "%s" if postgres else "?"
    cur.execute(f"SELECT id, meter, account FROM series WHERE id IN ({', '.join([mark] * len(ids))})", tuple(ids))  # noqa: S608
    return {int(i): (m, a) for i, m, a in cur.fetchall()}


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
    or belong to, void what their reversals reverse, and rebuild the usage rollups of the
    hours that gained a void. ``orphans``: whether reversals wait for their original."""
    mark = "%s" if postgres else "?"
    voids: set[tuple[int, int, str]] = set()
    lineage, batches, reversals = [], [], []
    for uid, series, ms, record in new:
        found = correction_of(record)
        if found is not None:
            lineage.append((org_id, uid, *found))
            if found[1] == REVERSAL:
                voids.add((series, ms // HOUR_MS, uid))
                reversals.append((uid, series, found[0]))
        batch = record.get("batch")
        if type(batch) is str:
            batches.append((org_id, batch, uid))
    waiting = []
    if reversals:
        stored = locate(cur, postgres, org_id, [of for _, _, of in reversals])
        for uid, series, of in reversals:
            target = stored.get(of)
            if target is None:
                waiting.append((org_id, of, uid, series))
            elif target[0] == series:
                voids.add((series, target[1] // HOUR_MS, of))
    if orphans:
        voids |= _arrived(cur, mark, org_id, {uid: (series, ms) for uid, series, ms, _ in new})
    for sql, params in (
        ("INSERT INTO corrections (org_id, uid, of_uid, kind) VALUES ({m}) ON CONFLICT DO NOTHING", lineage),
        ("INSERT INTO batches (org_id, batch, uid) VALUES ({m}) ON CONFLICT DO NOTHING", batches),
        ("INSERT INTO orphans (org_id, of_uid, uid, series) VALUES ({m}) ON CONFLICT DO NOTHING", waiting),
        ("INSERT INTO voids (series, hour, uid) VALUES ({m}) ON CONFLICT DO NOTHING", sorted(voids)),
    ):
        if params:
            cur.executemany(sql.format(m=", ".join([mark] * len(params[0]))), params)
    if voids:
        rebuild(cur, postgres, sorted({(s, h) for s, h, _ in voids}), shape_of)


def _arrived(cur: Any, mark: str, org_id: int, new: dict[str, tuple[int, int]]) -> set[tuple[int, int, str]]:
    """The voids of newly stored measurements whose reversal was stored first; their
    orphans are resolved (deleted), matched or not."""
    uids = sorted(new)
    found = []
    for i in range(0, len(uids), _IN_CHUNK):
        chunk = uids[i : i + _IN_CHUNK]
        cur.execute(
            f"SELECT of_uid, uid, series FROM orphans WHERE org_id = {mark}"  # noqa: S608 - marks only
            f" AND of_uid IN ({', '.join([mark] * len(chunk))})",
            (org_id, *chunk),
        )
        found += cur.fetchall()
    if found:
        cur.executemany(
            f"DELETE FROM orphans WHERE org_id = {mark} AND of_uid = {mark} AND uid = {mark}",  # noqa: S608 - marks
            [(org_id, of, uid) for of, uid, _ in found],
        )
    out = set()
    for of, _uid, series in found:
        at_series, ms = new[of]
        if at_series == series:
            out.add((series, ms // HOUR_MS, of))
    return out


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


def state(ledger: Any, org: str, uid: str) -> dict[str, Any] | None:
    """The measurement a :class:`.store.Ledger` stores for a uid, plus ``corrected``: the
    uids of its stored reversal and replacement (``reversed_by``, ``replaced_by``; None for
    neither). None if it is not stored."""
    conn = ledger.connection()
    try:
        cur, mark = conn.cursor(), ledger.mark
        org_id = ledger.org_id(cur, org)
        found = None if org_id is None else ledger.writer.decoded(cur, org_id, [uid]).get(uid)
        if found is None:
            return None
        cur.execute(f"SELECT kind, uid FROM corrections WHERE org_id = {mark} AND of_uid = {mark}", (org_id, uid))  # noqa: S608
        by = dict(cur.fetchall())
        corrected = {"reversed_by": by.get(REVERSAL), "replaced_by": by.get(REPLACEMENT)}
        out: dict[str, Any] = {**found, "corrected": corrected}
        return out
    finally:
        conn.close()


def batch_page(ledger: Any, org: str, batch: str, after: str = "", limit: int = 1000) -> list[dict[str, Any]]:
    """A backfill batch's measurements a :class:`.store.Ledger` stores, after uid ``after``
    in uid order (code points), at most ``limit``."""
    conn = ledger.connection()
    try:
        cur, mark = conn.cursor(), ledger.mark
        org_id = ledger.org_id(cur, org)
        if org_id is None:
            return []
        cur.execute(
            f"SELECT uid FROM batches WHERE org_id = {mark} AND batch = {mark} AND uid > {mark}"  # noqa: S608 - marks only
            f" ORDER BY uid LIMIT {int(limit)}",
            (org_id, batch, after),
        )
        uids = [u for (u,) in cur.fetchall()]
        found = ledger.writer.decoded(cur, org_id, uids)
        return [found[u] for u in uids if u in found]
    finally:
        conn.close()
