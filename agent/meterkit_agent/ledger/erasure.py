"""Erasure that keeps the books: a person's values leave the ledger's per-person detail,
every account-level total and bill stays exactly as it was, and reconciliation still passes.

``meterkit privacy erase`` (:mod:`..cli.privacy`) sends the subject's *forms*: every
pseudonym it may have under the listed keys, and the SHA-256 of the raw value (for values
stored unpseudonymized: a field with ``privacy: keep``, or data recorded before
pseudonymization was turned on). The raw value never travels and is never written: the
ledger hashes each distinct stored string once and compares (a bare SHA-256 is
reversible with a dictionary: it is never stored or logged; docs/privacy.md).

What changes, in one transaction:

- A stored string value (who, what, where, other, metadata) equal to a form becomes
  ``erased:<erasure id>:<n>``, ``n`` the form's position, so distinct forms stay distinct
  and UNIQUE counts stay what they were. Values live in the measurement's *shape*
  (:mod:`.codec`), so a row is pointed at a new shape; ``nums``, ``uid``, ``ts_ms`` and
  ``series`` (meter and account: the billed customer) never change, nor does any number a
  usage answer or bill reads. Bodies stored whole and ``conflicts`` are rewritten alike.
- ``erased`` (org_id, uid) keeps the content hash each rewritten row had when it was
  ingested (a second erasure of a row keeps the first), with the erasure's id and time.
  Reconciliation (:mod:`.digests`) uses it for those rows: what was delivered is still
  what is held, by measurement.
- ``str_rollup`` of the touched hours is rebuilt (``num_rollup``, ``hours`` untouched).
- The UPDATE fires the trigger that marks a changed hour ``dirty`` (:mod:`.schema`). The
  erasure then recomputes each touched hour's digest from its rows, with the kept hashes,
  and clears ``dirty`` only where that equals the digest ``hours`` holds from ingest. An
  hour someone had altered before stays dirty (its recomputed digest differs), so an
  erasure never launders an edit; the ``erased`` table is the one thing reconciliation
  takes on trust from the database, as it takes ``hours``.
- SQLite: ``secure_delete`` during the transaction, the write-ahead log truncated after
  it; PostgreSQL keeps old row versions until ``VACUUM`` (docs/privacy.md).

Idempotent: a form matches nothing once erased, so the same request again changes nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads route annotations (as in .digests).

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterkit._model import STRING_CATEGORIES, content_hash

from ..contentdigest import Digest
from ..instants import HOUR_MS
from . import corrections
from .codec import WHOLE, WHOLE_SHAPE, Shape, decode, numbers, uid_text
from .digests import kept_hashes
from .rollups import POSTGRES_UPSERTS, SQLITE_UPSERTS, Changes, batch_json, unsigned64
from .store import Ledger

_STRINGS = frozenset(STRING_CATEGORIES)
#: what an erased value starts with, and an aged one (:mod:`.retention`)
ERASED_PREFIX = "erased:"
AGED_PREFIX = "aged:"
#: a template -> its rewrite, or None when nothing in it changes
Rewrite = Callable[[dict[str, Any]], dict[str, Any] | None]


def rewrite_values(doc: dict[str, Any], replace: Callable[[str, str, str], str | None]) -> dict[str, Any] | None:
    """``doc`` (a template or a whole measurement) with each string value of a string
    category that ``replace(category, code, value)`` maps replaced, keys in their order; None
    if nothing changes."""
    changed = False
    out: dict[str, Any] = {}
    for category, spec in doc.items():
        if category in _STRINGS and type(spec) is dict:
            new = {}
            for code, value in spec.items():
                found = replace(category, code, value) if type(value) is str else None
                new[code] = value if found is None else found
                changed = changed or found is not None
            out[category] = new
        else:
            out[category] = spec
    return out if changed else None


def subject_matcher(erasure_id: str, forms: list[str], sha256: str | None) -> Callable[[str, str, str], str | None]:
    """``replace`` for one subject: a pseudonym form, or a value whose SHA-256 is ``sha256``,
    becomes ``erased:<id>:<n>`` (n: the form's position, the raw value's is 0)."""
    tokens = {form: f"{ERASED_PREFIX}{erasure_id}:{n}" for n, form in enumerate(forms, start=1)}
    hashed: dict[str, str | None] = {}

    def replace(_category: str, _code: str, value: str) -> str | None:
        found = tokens.get(value)
        if found is not None or sha256 is None or value.startswith((ERASED_PREFIX, AGED_PREFIX)):
            return found
        if value not in hashed:
            raw = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest() == sha256
            hashed[value] = f"{ERASED_PREFIX}{erasure_id}:0" if raw else None
        return hashed[value]

    return replace


@dataclass
class Outcome:
    """What a rewrite changed (or, dry, would change)."""

    uids: list[str] = field(default_factory=list)
    hours: int = 0
    conflicts: int = 0
    dirty: int = 0  # touched hours left dirty: their rows did not match ``hours`` before

    def answer(self) -> dict[str, Any]:
        return {"rows": len(self.uids), "uids": self.uids, "hours": self.hours, "conflicts": self.conflicts,
                "hoursLeftDirty": self.dirty}  # fmt: skip


class Rewriter:
    """One rewrite of stored values, inside one transaction of the ledger's database."""

    def __init__(self, ledger: Ledger, cur: Any, org_id: int, label: str, dry_run: bool) -> None:
        self.ledger, self.cur, self.org_id, self.label, self.dry = ledger, cur, org_id, label, dry_run
        self.postgres = ledger.postgres
        self.mark = ledger.mark
        self.shapes: dict[int, Shape] = {WHOLE: WHOLE_SHAPE}  # this transaction's own cache
        self.touched: set[tuple[int, int]] = set()
        self.kept: list[tuple[int, str, str, str, int]] = []
        self.moved: set[int] = set()  # shapes rows were moved away from
        self.dropped: set[int] = set()  # those no row refers to any more, deleted
        self.out = Outcome()

    def shape(self, _cur: Any, shape_id: int) -> Shape:
        found = self.shapes.get(shape_id)
        if found is None:
            self.cur.execute(f"SELECT template FROM shapes WHERE id = {self.mark}", (shape_id,))  # noqa: S608
            found = self.shapes[shape_id] = Shape.of(orjson.loads(self.cur.fetchone()[0]))
        return found

    def shape_id(self, template: dict[str, Any]) -> int:
        text = orjson.dumps(template).decode()
        mark = self.mark
        self.cur.execute(f"INSERT INTO shapes (template) VALUES ({mark}) ON CONFLICT DO NOTHING", (text,))  # noqa: S608
        self.cur.execute(f"SELECT id FROM shapes WHERE template = {mark}", (text,))  # noqa: S608
        return int(self.cur.fetchone()[0])

    def rows(self, series: int, shape: int, lo: int, hi: int) -> list[tuple[Any, ...]]:
        m = self.mark
        self.cur.execute(
            f"SELECT uid, ts_ms, nums, extra FROM measurements WHERE series = {m} AND shape = {m}"  # noqa: S608
            f" AND ts_ms >= {m} AND ts_ms < {m}",
            (series, shape, lo, hi),
        )
        return list(self.cur.fetchall())

    def move(self, series: int, pair: tuple[str, str], old: int, rewrite: Rewrite, lo: int, hi: int) -> None:
        """Point the rows of ``series`` with shape ``old`` in ``[lo, hi)`` at the rewritten
        shape (or, for measurements stored whole, rewrite their bodies), keeping each row's
        content hash first."""
        shape = self.shape(self.cur, old)
        new_template = None if old == WHOLE else rewrite(shape.template)
        if old != WHOLE and new_template is None:
            return
        new = None if new_template is None or self.dry else self.shape_id(new_template)
        m = self.mark
        for uid, ms, nums, extra in self.rows(series, old, lo, hi):
            body = decode(uid_text(uid), *pair, int(ms), shape, nums, extra)
            if old == WHOLE:
                changed = rewrite(body)
                if changed is None:
                    continue
                if not self.dry:
                    self.cur.execute(
                        f"UPDATE measurements SET extra = {m} WHERE series = {m} AND ts_ms = {m} AND uid = {m}",  # noqa: S608
                        (orjson.dumps({"body": changed}).decode(), series, ms, uid),
                    )
            self.out.uids.append(uid_text(uid))
            self.touched.add((series, int(ms) // HOUR_MS))
            self.kept.append((self.org_id, uid_text(uid), content_hash(body), self.label, time.time_ns() // 1_000_000))
        if new is not None:
            self.moved.add(old)
            self.cur.execute(
                f"UPDATE measurements SET shape = {m} WHERE series = {m} AND shape = {m}"  # noqa: S608
                f" AND ts_ms >= {m} AND ts_ms < {m}",
                (new, series, old, lo, hi),
            )

    def scrub_conflicts(
        self, org: str, replace: Callable[[str, str, str], str | None], before_ms: int | None = None
    ) -> None:
        """Rewrite the refused re-sends kept in ``conflicts`` (their hashes stay: they name
        what was sent); with ``before_ms``, only those whose ``ts`` is earlier."""
        m = self.mark
        self.cur.execute(f"SELECT uid, other_hash, other_body FROM conflicts WHERE org = {m}", (org,))  # noqa: S608
        for uid, other, body in self.cur.fetchall():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict) or (before_ms is not None and not self._before(doc, before_ms)):
                continue
            changed = rewrite_values(doc, replace)
            if changed is None:
                continue
            self.out.conflicts += 1
            if not self.dry:
                self.cur.execute(
                    f"UPDATE conflicts SET other_body = {m} WHERE org = {m} AND uid = {m} AND other_hash = {m}",  # noqa: S608
                    (orjson.dumps(changed).decode(), org, uid, other),
                )

    def _before(self, doc: dict[str, Any], before_ms: int) -> bool:
        try:
            return self.ledger.writer.codec.instant(doc.get("ts"))[0] < before_ms
        except ValueError:
            return False

    def finish(self, series: dict[int, tuple[str, str]]) -> Outcome:
        """Keep the hashes, rebuild the string rollups of the touched hours, and clear the
        ``dirty`` mark the UPDATE set where each hour still digests to what ``hours`` holds."""
        hours = sorted(self.touched)
        self.out.hours = len(hours)
        if self.dry or not hours:
            return self.out
        m = self.mark
        self.cur.executemany(
            f"INSERT INTO erased (org_id, uid, content_hash, erasure_id, at_ms) VALUES ({m}, {m}, {m}, {m}, {m})"  # noqa: S608
            " ON CONFLICT (org_id, uid) DO NOTHING",
            self.kept,
        )
        rebuild_strings(self.cur, self.postgres, hours, self.shape)
        self._drop_shapes()
        for s, hour in hours:
            if self._settled(s, series[s], hour):
                self.cur.execute(f"UPDATE hours SET dirty = 0 WHERE series = {m} AND hour = {m}", (s, hour))  # noqa: S608
            else:
                self.out.dirty += 1
        return self.out

    def _drop_shapes(self) -> None:
        """Delete the templates no row refers to any more: a template holds the values
        themselves, so the old one would keep what was erased. (One scan of the shapes in
        use; a template other rows, of this or another organisation, still use stays.)"""
        if not self.moved:
            return
        self.cur.execute("SELECT DISTINCT shape FROM measurements")
        used = {int(s) for (s,) in self.cur.fetchall()}
        self.dropped = self.moved - used
        if self.dropped:
            self.cur.executemany(f"DELETE FROM shapes WHERE id = {self.mark}", [(i,) for i in sorted(self.dropped)])  # noqa: S608

    def forget(self) -> None:
        """After the commit: the ledger's ingest caches forget the deleted templates (a
        later measurement with one of them inserts it again). Other ledger processes
        (``--workers N``) keep theirs until restarted: see docs/privacy.md."""
        writer = self.ledger.writer
        for template, shape_id in list(writer.shape_ids.items()):
            if shape_id in self.dropped:
                del writer.shape_ids[template]
                writer.shapes.pop(shape_id, None)

    def _settled(self, series: int, pair: tuple[str, str], hour: int) -> bool:
        m = self.mark
        self.cur.execute(
            f"SELECT count, content, check_xor FROM hours WHERE series = {m} AND hour = {m}",  # noqa: S608
            (series, hour),
        )
        held = self.cur.fetchone()
        if held is None:
            return False
        found = Digest()
        rows = self.rows_of_hour(series, hour)
        kept = kept_hashes(self.cur, m, self.org_id, [uid_text(r[0]) for r in rows])
        for uid, ms, shape, nums, extra in rows:
            text = uid_text(uid)
            body_hash = kept.get(text)
            if body_hash is None:
                body_hash = content_hash(decode(text, *pair, int(ms), self.shape(self.cur, int(shape)), nums, extra))
            found.add(body_hash)
        content = held[1]
        total = int(content) if self.postgres else int(content, 16)
        return found == Digest(int(held[0]), total, unsigned64(int(held[2])))

    def rows_of_hour(self, series: int, hour: int) -> list[tuple[Any, ...]]:
        m = self.mark
        self.cur.execute(
            f"SELECT uid, ts_ms, shape, nums, extra FROM measurements WHERE series = {m}"  # noqa: S608
            f" AND ts_ms >= {m} AND ts_ms < {m}",
            (series, hour * HOUR_MS, (hour + 1) * HOUR_MS),
        )
        return list(self.cur.fetchall())


def rebuild_strings(
    cur: Any, postgres: bool, hours: list[tuple[int, int]], shape_of: Callable[[Any, int], Shape]
) -> None:
    """Rebuild ``str_rollup`` of these (series, hour) from their rows that count (every
    stored row but those a correction voids), as :func:`.corrections.rebuild` does for both
    usage rollups; the numbers' rollups are left as they are."""
    mark = "%s" if postgres else "?"
    series, ms, uids, shapes, values = [], [], [], [], []
    for s, hour in hours:
        void = corrections.voided(cur, mark, [s], hour, hour + 1)
        cur.execute(
            f"SELECT uid, ts_ms, shape, nums FROM measurements WHERE series = {mark}"  # noqa: S608 - marks only
            f" AND ts_ms >= {mark} AND ts_ms < {mark}",
            (s, hour * HOUR_MS, (hour + 1) * HOUR_MS),
        )
        for uid, at, shape, nums in cur.fetchall():
            if uid_text(uid) not in void:
                series.append(s)
                ms.append(int(at))
                uids.append(uid_text(uid))
                shapes.append(int(shape))
                values.append(numbers(nums))
    cur.executemany(f"DELETE FROM str_rollup WHERE series = {mark} AND hour = {mark}", hours)  # noqa: S608
    known = {shape: shape_of(cur, shape) for shape in set(shapes)}
    _, _, str_rows = Changes(series, ms, uids, shapes, values, None).rows(known)
    if not str_rows:
        return
    if postgres:
        cur.execute(POSTGRES_UPSERTS[2], (batch_json(str_rows),))
    else:
        cur.executemany(SQLITE_UPSERTS[2], str_rows)


def in_transaction(ledger: Ledger, org: str, work: Callable[[Any, int], Rewriter]) -> Outcome:
    """Run ``work(cur, org_id)``, a finished :class:`Rewriter`, in one write transaction, as
    an ingest runs (the ledger's ingest lock; SQLite's write lock; PostgreSQL: the organisation's ingest lock, taken
    exclusively, so no ingest of it adds to a rollup being rebuilt)."""
    with ledger._lock:
        conn = ledger.connection()
        try:
            cur = conn.cursor()
            if not ledger.postgres:
                cur.execute("PRAGMA secure_delete = ON")  # what a rewrite frees is zeroed, not left in the file
                cur.execute("BEGIN IMMEDIATE")
            else:
                corrections.lock(cur, org, exclusive=True)
            org_id = ledger.org_id(cur, org)
            job = None if org_id is None else work(cur, org_id)
            conn.commit()
            if not ledger.postgres:
                # the old values' pages leave the write-ahead log for the (zeroed) database file
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cur.execute("PRAGMA secure_delete = OFF")
            if job is None:
                return Outcome()
            job.forget()
            return job.out
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()


class ErasureIdUsed(ValueError):
    """An erasure's id names its tokens (``erased:<id>:<n>``): used twice, two subjects'
    values would become one, and a UNIQUE count would fall."""


def erase(
    ledger: Ledger, org: str, erasure_id: str, forms: list[str], sha256: str | None, dry_run: bool = False
) -> Outcome:
    """Erase a subject's values (its pseudonym ``forms`` and the value whose SHA-256 is
    ``sha256``) from the organisation's measurements and conflicts."""
    replace = subject_matcher(erasure_id, forms, sha256)

    def rewrite(doc: dict[str, Any]) -> dict[str, Any] | None:
        return rewrite_values(doc, replace)

    def work(cur: Any, org_id: int) -> Rewriter:
        mark = ledger.mark
        used = f"SELECT 1 FROM erased WHERE org_id = {mark} AND erasure_id = {mark} LIMIT 1"  # noqa: S608 - marks only
        cur.execute(used, (org_id, erasure_id))
        if cur.fetchone() is not None:  # its tokens are in use: another subject's would merge with them
            raise ErasureIdUsed(f"erasure id {erasure_id!r} was used by an earlier erasure; give a new one")
        job = Rewriter(ledger, cur, org_id, erasure_id, dry_run)
        series = ledger.series(cur, org, None, None)
        cur.execute("SELECT id, template FROM shapes")
        matching = {WHOLE}
        for shape_id, template in cur.fetchall():
            if rewrite(orjson.loads(template)) is not None:
                matching.add(int(shape_id))
        for s, pair in sorted(series.items()):
            for shape in sorted(matching):
                job.move(s, pair, shape, rewrite, -(2**62), 2**62)
        job.scrub_conflicts(org, replace)
        job.finish(series)
        return job

    return in_transaction(ledger, org, work)
