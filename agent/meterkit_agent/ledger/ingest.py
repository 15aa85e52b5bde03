"""Storing a batch of measurements, on a DBAPI cursor inside the caller's transaction.

1. Each measurement is split into its compact parts (:mod:`.codec`) and its content hash
   computed (:func:`meterkit._model.content_hash`: what tells a re-send from a conflict,
   and what the hourly content digest adds up).
2. Its organisation, series and shape get their integers (inserted when first seen).
3. Its uid is claimed. The first occurrence of a uid in the batch is the one that may be
   stored. SQLite: one ``INSERT ... ON CONFLICT DO NOTHING`` of every row; when fewer rows
   went in than were offered (a re-send), the insert is undone to a savepoint and repeated
   with only the uids not yet stored (the write lock is held throughout, so nothing changes
   between the look and the insert). PostgreSQL: ``uids`` is claimed first, ``RETURNING``
   the uids this transaction claimed; a concurrent claim of the same uid waits for the
   other transaction and then is not returned. Only claimed uids are stored and rolled up.
4. What was already stored is read back, decoded and hashed: the same content is a
   duplicate, other content a conflict (kept in ``conflicts``).
5. The rollups of the new measurements are added (:mod:`.rollups`).
6. Corrections (:mod:`.corrections`): a reversal whose original is stored for another
   meter or account is refused before step 3; after step 5, what the new measurements
   correct is voided and the usage rollups of those hours rebuilt. A batch with no
   correction pays one probe for reversals waiting for their original (and, on
   PostgreSQL, a shared lock taken first: :mod:`.corrections` says why).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterkit._model import content_hash

from ..instants import DAY_MS, civil_from_days, days_from_civil
from . import corrections, rollups
from .codec import WHOLE, WHOLE_SHAPE, Codec, Shape, decode, uid_key, uid_text

_IN_CHUNK = 500  # uids per IN (...) list: well under every SQLite build's variable limit


def month_start(ms: int) -> int:
    year, month, _ = civil_from_days(ms // DAY_MS)
    return days_from_civil(year, month, 1) * DAY_MS


def month_end(start: int) -> int:
    year, month, _ = civil_from_days(start // DAY_MS)
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return days_from_civil(year, month, 1) * DAY_MS


def partition_sql(start: int) -> str:
    """PostgreSQL's partition of ``measurements`` for the month starting at ``start``."""
    name = f"measurements_m{start // 1000}".replace("-", "n")
    return (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF measurements FOR VALUES FROM ({start}) TO ({month_end(start)})"
    )


#: A measurement split for storing, a plain tuple (a batch makes a thousand of them):
#: (uid, meter, account, ts_ms, template, nums, extra, content hash, the record, its numbers)
Row = tuple[str, str, str, int, str, str | None, str | None, str, dict[str, Any], list[Any]]


@dataclass
class Outcome:
    new: int
    duplicates: int
    clashes: list[tuple[str, str, str, str]] = field(default_factory=list)  # uid, other hash, first hash, body
    refused: list[corrections.Refusal] = field(default_factory=list)
    placed: list[tuple[str, int]] = field(default_factory=list)  # uid, index of the row stored


class Writer:
    """The ingest machinery for one database; its caches hold only committed ids."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self.mark = "%s" if postgres else "?"
        self.codec = Codec()
        self.orgs: dict[str, int] = {}
        self.series: dict[tuple[str, str, str], int] = {}
        self.shape_ids: dict[str, int] = {"": WHOLE}
        self.shapes: dict[int, Shape] = {WHOLE: WHOLE_SHAPE}
        self.flags: dict[tuple[str, str], int] = {}
        self.months: set[int] = set()
        self._pending: list[tuple[dict[Any, Any], Any, Any]] = []

    # -- 1. split ---------------------------------------------------------------------------

    def split(self, records: Iterable[dict[str, Any]]) -> list[Row]:
        """Raises ValueError naming a measurement whose ts is not a time."""
        rows = []
        split = self.codec.parts
        for r in records:
            uid, meter, account = r.get("uid"), r.get("meter"), r.get("account")
            if type(uid) is not str or type(meter) is not str or type(account) is not str:
                raise ValueError(f"measurement {uid!r:.60}: uid, meter and account must be strings")
            try:
                ms, template, nums, extra, values = split(r)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"measurement {uid!r}: {exc}") from None
            rows.append((uid, meter, account, ms, template, nums, extra, content_hash(r), r, values))
        return rows

    def months_of(self, rows: list[Row]) -> set[int]:
        """The month starts these rows fall in that have no known partition (PostgreSQL)."""
        if not self.postgres:
            return set()
        return {month_start(ms) for ms in {r[3] - r[3] % DAY_MS for r in rows}} - self.months

    # -- 2. dictionaries --------------------------------------------------------------------

    def _id(self, cur: Any, table: str, columns: tuple[str, ...], values: tuple[Any, ...]) -> int:
        marks = ", ".join([self.mark] * len(values))
        where = " AND ".join(f"{c} = {self.mark}" for c in columns)
        cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING", values)  # noqa: S608 - fixed names
        cur.execute(f"SELECT id FROM {table} WHERE {where}", values)  # noqa: S608 - fixed names
        return int(cur.fetchone()[0])

    def _resolve(self, cur: Any, org: str, rows: list[Row]) -> tuple[int, list[int], list[int]]:
        """The organisation's id, and each row's series and shape ids."""
        org_id = self.orgs.get(org)
        if org_id is None:
            org_id = self._id(cur, "orgs", ("org",), (org,))
            self._pending.append((self.orgs, org, org_id))
        # a batch has a few series and shapes: each is looked up once, then by a dict
        pairs = {(r[1], r[2]): 0 for r in rows}
        series, shape_ids = self.series, self.shape_ids
        for meter, account in sorted(pairs):
            key = (org, meter, account)
            found = series.get(key)
            if found is None:
                found = series[key] = self._id(cur, "series", ("org", "meter", "account"), key)
                self._pending.append((series, key, found))
            pairs[(meter, account)] = found
        for template in sorted({r[4] for r in rows} - shape_ids.keys()):
            found = self._id(cur, "shapes", ("template",), (template,))
            shape_ids[template] = found
            self.shapes[found] = Shape.of(orjson.loads(template))
            self._pending.append((shape_ids, template, found))
            self._pending.append((self.shapes, found, found))
        return org_id, [pairs[(r[1], r[2])] for r in rows], [shape_ids[r[4]] for r in rows]

    def committed(self) -> None:
        self._pending.clear()

    def rolled_back(self) -> None:
        """Forget ids learned in a transaction that did not commit."""
        for table, key, _ in self._pending:
            table.pop(key, None)
        self._pending.clear()

    # -- 3.-5. claim, compare, roll up ------------------------------------------------------

    def write(self, cur: Any, org: str, rows: list[Row]) -> Outcome:
        """Store the rows' new measurements and their rollups, in the open transaction."""
        marked = corrections.marked(rows)
        if self.postgres:
            corrections.lock(cur, org, exclusive=marked)  # first: before any row lock
        org_id, series, shapes = self._resolve(cur, org, rows)
        refused = corrections.refusals(cur, self.postgres, org_id, rows, series) if marked else []
        if refused:
            out = {r.index for r in refused}
            keep = [i for i in range(len(rows)) if i not in out]
            rows, series, shapes = [rows[i] for i in keep], [series[i] for i in keep], [shapes[i] for i in keep]
        outcome = self._store(cur, org, org_id, rows, series, shapes)
        orphans = outcome.new > 0 and corrections.has_orphans(cur, self.mark, org_id)
        if outcome.new and (marked or orphans):
            new = [(uid, series[i], rows[i][3], rows[i][8]) for uid, i in outcome.placed]
            corrections.apply(cur, self.postgres, org_id, new, orphans, self.shape)
        outcome.refused = refused
        return outcome

    def _store(self, cur: Any, org: str, org_id: int, rows: list[Row], series: list[int], shapes: list[int]) -> Outcome:
        first: dict[str, int] = {}  # uid -> index of its first row
        for i, row in enumerate(rows):
            first.setdefault(row[0], i)
        claim = _claim_postgres if self.postgres else self._claim_sqlite
        claimed = claim(cur, org_id, [(rows[i], series[i], shapes[i]) for i in first.values()])
        clashes = []
        if len(claimed) != len(rows):  # re-sends, in this batch or of stored uids
            standing = {uid: rows[first[uid]][7] for uid in claimed}
            if len(claimed) != len(first):
                standing.update(self.stored_hashes(cur, org_id, [u for u in first if u not in standing]))
            for row in rows:
                stands = standing.get(row[0], row[7])
                if stands != row[7]:
                    clashes.append((row[0], row[7], stands, orjson.dumps(row[8]).decode()))
        if claimed:
            picked = [first[uid] for uid in claimed]
            changes = rollups.Changes(
                [series[i] for i in picked],
                [rows[i][3] for i in picked],
                claimed,
                [shapes[i] for i in picked],
                [rows[i][9] for i in picked],
                [rows[i][7] for i in picked],
            )
            rollups.upsert(cur, self.postgres, changes, self.shapes)
            self._fields(cur, {(rows[i][1], shapes[i]) for i in picked})
        if clashes:
            seen = time.time_ns() // 1_000_000
            cur.executemany(
                "INSERT INTO conflicts (org, uid, other_hash, first_hash, other_body, seen_at_ms)"  # noqa: S608 - marks
                f" VALUES ({', '.join([self.mark] * 6)}) ON CONFLICT (org, uid, other_hash) DO NOTHING",
                [(org, uid, other, stands, body, seen) for uid, other, stands, body in clashes],
            )
        placed = [(uid, first[uid]) for uid in claimed]
        return Outcome(len(claimed), len(rows) - len(claimed) - len(clashes), clashes, placed=placed)

    def _claim_sqlite(self, cur: Any, org_id: int, first: list[tuple[Row, int, int]]) -> list[str]:
        """Store the measurements whose uid is not stored yet; their uids. ``first``: each
        uid's first row, with its series and shape ids."""
        sql = (
            "INSERT INTO measurements (org_id, series, ts_ms, uid, shape, nums, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, uid) DO NOTHING"
        )
        params = [(org_id, s, r[3], uid_key(r[0]), shape, r[5], r[6]) for r, s, shape in first]
        cur.execute("SAVEPOINT claim")
        cur.executemany(sql, params)
        uids = [r[0] for r, _, _ in first]
        if cur.rowcount == len(params):
            cur.execute("RELEASE claim")
            return uids
        cur.execute("ROLLBACK TO claim")
        stored = set(stored_rows(cur, self.postgres, org_id, uids))
        fresh = [p for p, u in zip(params, uids, strict=True) if u not in stored]
        cur.executemany(sql, fresh)
        cur.execute("RELEASE claim")
        return [u for u in uids if u not in stored]

    def _fields(self, cur: Any, kinds: set[tuple[str, int]]) -> None:
        """Record where the codes of these (meter, shape) pairs have been seen."""
        seen: dict[tuple[str, str], int] = {}
        for meter, shape in kinds:
            for code, flag in self.shapes[shape].flags.items():
                seen[(meter, code)] = seen.get((meter, code), 0) | flag
        new = sorted((k, f) for k, f in seen.items() if self.flags.get(k, 0) | f != self.flags.get(k, 0))
        if not new:
            return
        cur.executemany(
            f"INSERT INTO fields (meter, code, flags) VALUES ({self.mark}, {self.mark}, {self.mark})"  # noqa: S608
            " ON CONFLICT (meter, code) DO UPDATE SET flags = fields.flags | excluded.flags",
            [(m, c, f) for (m, c), f in new],
        )
        for key, f in new:
            old = self.flags.get(key, 0)
            self.flags[key] = old | f
            self._pending.append((self.flags, key, old | f))

    # -- reading stored measurements by uid ------------------------------------------------

    def shape(self, cur: Any, shape_id: int) -> Shape:
        found = self.shapes.get(shape_id)
        if found is None:
            cur.execute(f"SELECT template FROM shapes WHERE id = {self.mark}", (shape_id,))  # noqa: S608 - a mark
            found = self.shapes[shape_id] = Shape.of(orjson.loads(cur.fetchone()[0]))
        return found

    def decoded(self, cur: Any, org_id: int, uids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored measurements of these uids, as they were stored."""
        out = {}
        for uid, (meter, account, ms, shape, nums, extra) in stored_rows(cur, self.postgres, org_id, uids).items():
            out[uid] = decode(uid, meter, account, ms, self.shape(cur, shape), nums, extra)
        return out

    def stored_hashes(self, cur: Any, org_id: int, uids: list[str]) -> dict[str, str]:
        return {uid: content_hash(m) for uid, m in self.decoded(cur, org_id, uids).items()}


def _claim_postgres(cur: Any, org_id: int, first: list[tuple[Row, int, int]]) -> list[str]:
    ordered = sorted(first, key=lambda f: f[0][0])  # one lock order for every claim: concurrent claims never deadlock
    cur.execute(
        "INSERT INTO uids (org_id, uid, series, ts_ms) "
        + rollups.batch_sql(("text", "int", "bigint"), lead="%s, ")
        + " ON CONFLICT DO NOTHING RETURNING uid",
        (org_id, rollups.batch_json([(r[0], s, r[3]) for r, s, _ in ordered])),
    )
    mine = {uid for (uid,) in cur.fetchall()}
    rows = [f for f in first if f[0][0] in mine]
    if rows:
        cur.execute(
            "INSERT INTO measurements (series, ts_ms, uid, shape, nums, extra) "
            + rollups.batch_sql(("int", "bigint", "text", "int", "text", "text")),
            (rollups.batch_json([(s, r[3], r[0], shape, r[5], r[6]) for r, s, shape in rows]),),
        )
    return [r[0] for r, _, _ in rows]


def stored_rows(cur: Any, postgres: bool, org_id: int, uids: list[str]) -> dict[str, tuple[Any, ...]]:
    """uid -> (meter, account, ts_ms, shape, nums, extra) of those stored."""
    out = {}
    for i in range(0, len(uids), _IN_CHUNK):
        chunk = uids[i : i + _IN_CHUNK]
        if postgres:
            cur.execute(
                "SELECT m.uid, s.meter, s.account, m.ts_ms, m.shape, m.nums, m.extra"
                " FROM uids u JOIN measurements m ON m.series = u.series AND m.ts_ms = u.ts_ms AND m.uid = u.uid"
                " JOIN series s ON s.id = m.series WHERE u.org_id = %s AND u.uid = ANY(%s)",
                (org_id, chunk),
            )
        else:
            cur.execute(
                "SELECT m.uid, s.meter, s.account, m.ts_ms, m.shape, m.nums, m.extra"  # noqa: S608 - marks only
                f" FROM measurements m JOIN series s ON s.id = m.series"
                f" WHERE m.org_id = ? AND m.uid IN ({', '.join('?' * len(chunk))})",
                (org_id, *(uid_key(u) for u in chunk)),
            )
        for uid, *rest in cur.fetchall():
            out[uid_text(uid)] = tuple(rest)
    return out
