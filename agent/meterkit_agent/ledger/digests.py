"""What reconciliation asks of a ledger: per-bucket content digests, the uids of a bucket
with their content hashes, stored measurements by uid, and the audit journal anchors.

- **Bucket digests** (``GET .../reconcile/buckets?from&to[&meter][&account]``): per
  (meter, account, UTC hour) the count and the content digest of the measurements held,
  as :mod:`..contentdigest` defines it. Read from the ``hours`` rollup the ledger keeps at
  ingest (:mod:`.rollups`), and checked against the rows themselves: the rows of the
  period are counted per hour on the ``(series, ts_ms)`` index, and an hour whose count
  differs from its rollup's (a row inserted or deleted by anything but the ledger), or
  that a trigger marked ``dirty`` (a stored row changed or deleted), is recomputed from its
  rows, decoded and hashed. So a rollup that says what was ingested never hides an edit
  to what is held. A row an erasure or retention pass rewrote (:mod:`.erasure`) counts
  with the content hash it was ingested with (``erased``): its personal values are gone,
  what it says about usage is what was delivered.
- **Uid listings** (``POST .../reconcile/uids``): ``[uid, meter, account, hour,
  content_hash]`` for the buckets a drill-down names, hashed from the stored rows.
- **Lookup** (``POST .../reconcile/lookup``): stored measurements by uid, wherever they
  are, and the conflicting re-sends the ledger refused for them.
- **Anchors** (``GET .../anchors``): every authorized ingest request that carries
  ``X-Meterkit-Journal`` and ``X-Meterkit-Journal-Head: <seq>:<hash>`` moves that
  journal's anchor forward (accepted or refused as invalid: the head is true either way).
  A head that goes backwards (a journal cut, then written on) never replaces the anchor,
  and is kept in ``regressed``.
"""

# No ``from __future__ import annotations`` here: the routes are defined inside
# :func:`register`, which imports the web stack only when a ledger serves HTTP (so
# reconciliation reading a database never loads it), and FastAPI reads a route's
# annotations as objects.
import functools
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from meterkit._model import content_hash

from ..contentdigest import Digest
from ..instants import HOUR_MS, InstantError, boundary_ms, iso
from .codec import decode
from .rollups import unsigned64
from .store import Ledger

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("meterkit.ledger")

_meta = sa.MetaData()
journal_anchors = sa.Table(
    "anchors",
    _meta,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("journal", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),  # when the anchor last moved, UTC ms
    sa.Column("regressed", sa.Text),  # the first head that went backwards, described
)

_JOURNAL = re.compile(r"[0-9a-f]{32}\Z")
_HEAD = re.compile(r"([1-9][0-9]{0,17}):([0-9a-f]{64})\Z")
_INGEST_PATH = re.compile(r"/organizations/([^/]+)/measurements\Z")
MAX_BODY_BYTES = 4_000_000
MAX_LOOKUP = 5_000
_IN_CHUNK = 500  # uids per IN (...) list


@functools.lru_cache(maxsize=8192)
def hour_text(hour_ms: int) -> str:
    """An hour as the journal writes it (``meterkit._model.tally``): ``...T10:00:00Z``."""
    return iso(hour_ms)[:13] + ":00:00Z"


def hour_ms(text: str) -> int:
    return boundary_ms(text, "hour") // HOUR_MS * HOUR_MS


class Digests:
    """Reconciliation's queries over one ledger database, and its anchors."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.postgres = ledger.postgres
        self._moved: dict[tuple[str, str], tuple[int, str]] = {}  # the last anchor written, per journal
        with self.engine.begin() as conn:
            _meta.create_all(conn)

    # -- digests and listings -------------------------------------------------------------

    def pairs(self, org: str, meter: str | None = None, account: str | None = None) -> list[tuple[str, str]]:
        """Every (meter, account) the organisation has stored measurements for."""
        conn = self.ledger.connection()
        try:
            return sorted(self.ledger.series(conn.cursor(), org, meter, account).values())
        finally:
            conn.close()

    def buckets(
        self, org: str, start_ms: int, end_ms: int, meter: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        """Per (meter, account, hour) in ``[start_ms, end_ms)``: count and content digest."""
        ledger, mark = self.ledger, self.ledger.mark
        conn = ledger.connection()
        try:
            cur = conn.cursor()
            if not self.postgres:
                cur.execute("BEGIN")  # one snapshot for the rollups and the rows
            series = ledger.series(cur, org, meter, account)
            if not series:
                return []
            org_id = ledger.org_id(cur, org)
            first, last = -(-start_ms // HOUR_MS), -(-end_ms // HOUR_MS)
            marks = ", ".join([mark] * len(series))
            cur.execute(
                "SELECT series, hour, count, content, check_xor, dirty FROM hours"  # noqa: S608 - marks only
                f" WHERE series IN ({marks}) AND hour >= {mark} AND hour < {mark}",
                (*series, first, last),
            )
            held = {(s, h): (n, content, check, dirty) for s, h, n, content, check, dirty in cur.fetchall()}
            cur.execute(
                f"SELECT series, ts_ms / {HOUR_MS}, count(*) FROM measurements"  # noqa: S608 - marks only
                f" WHERE series IN ({marks}) AND ts_ms >= {mark} AND ts_ms < {mark} GROUP BY series, ts_ms / {HOUR_MS}",
                (*series, first * HOUR_MS, last * HOUR_MS),
            )
            counted = {(s, int(h)): int(n) for s, h, n in cur.fetchall()}
            out = []
            for s, h in sorted(held.keys() | counted.keys()):
                n, content, check, dirty = held.get((s, h), (0, 0, 0, 1))
                if dirty or int(n) != counted.get((s, h), 0):
                    digest = self._rehash(cur, org_id, s, series[s], h)
                else:
                    total = int(content) if self.postgres else int(content, 16)
                    digest = Digest(int(n), total, unsigned64(int(check)))
                if digest.count:
                    meter_, account_ = series[s]
                    out.append(
                        {"meter": meter_, "account": account_, "hour": hour_text(h * HOUR_MS), "count": digest.count}
                    )
                    out[-1].update(digest.as_json())
            return out
        finally:
            conn.close()

    def _rehash(self, cur: Any, org_id: int | None, series: int, pair: tuple[str, str], hour: int) -> Digest:
        """An hour's digest from its rows (the rollup cannot be trusted for it)."""
        digest = Digest()
        for _uid, _hour, h in self._rows(cur, org_id, {series: pair}, hour * HOUR_MS, (hour + 1) * HOUR_MS):
            digest.add(h)
        return digest

    def _rows(
        self, cur: Any, org_id: int | None, series: dict[int, tuple[str, str]], lo: int, hi: int
    ) -> Iterator[tuple[str, int, str]]:
        """(uid, hour start ms, content hash) of each stored row, decoded and hashed; a row an
        erasure or a retention pass rewrote (:mod:`.erasure`) with the hash it was ingested
        with, which is what was delivered."""
        shape_of = self.ledger.writer.shape
        rows = self.ledger.raw(cur, series, lo, hi)
        if not has_erased(cur, self.ledger.mark, org_id):
            for uid, ms, _, (m, a, shape, nums, extra) in rows:
                body = decode(uid, m, a, ms, shape_of(cur, shape), nums, extra)
                yield uid, ms // HOUR_MS * HOUR_MS, content_hash(body)
            return
        assert org_id is not None
        found = list(rows)  # read whole before the kept hashes are looked up on the same cursor
        kept = kept_hashes(cur, self.ledger.mark, org_id, [r[0] for r in found])
        for uid, ms, _, (m, a, shape, nums, extra) in found:
            held = kept.get(uid)
            if held is None:
                held = content_hash(decode(uid, m, a, ms, shape_of(cur, shape), nums, extra))
            yield uid, ms // HOUR_MS * HOUR_MS, held

    def listing(self, org: str, buckets: Iterable[tuple[str, str, str]]) -> list[list[str]]:
        """``[uid, meter, account, hour, content_hash]`` for every row of the buckets."""
        hours: dict[tuple[str, str], set[int]] = defaultdict(set)
        for meter, account, text in buckets:
            hours[(meter, account)].add(hour_ms(text))
        out = []
        conn = self.ledger.connection()
        try:
            cur = conn.cursor()
            for (meter, account), wanted in sorted(hours.items()):
                series = self.ledger.series(cur, org, meter, account)
                org_id = self.ledger.org_id(cur, org)
                for start in sorted(wanted):
                    for uid, _, h in self._rows(cur, org_id, series, start, start + HOUR_MS):
                        out.append([uid, meter, account, hour_text(start), h])
        finally:
            conn.close()
        return out

    def lookup(self, org: str, uids: list[str]) -> dict[str, Any]:
        """Stored measurements by uid (``measurements``: uid, meter, account, hour,
        content_hash, body) and the conflicting re-sends refused for them (``conflicts``)."""
        found: list[dict[str, Any]] = []
        held = self.ledger.get_many(org, uids)
        kept = self._kept(org, list(held))
        for uid, body in sorted(held.items()):
            ms = self.ledger.writer.codec.instant(body["ts"])[0]
            entry = {"uid": uid, "meter": body["meter"], "account": body["account"]}
            digest = kept.get(uid) or content_hash(body)  # an erased row: the hash it was delivered with
            found.append({**entry, "hour": hour_text(ms // HOUR_MS * HOUR_MS), "content_hash": digest, "body": body})
        refused: list[dict[str, Any]] = []
        mark = self.ledger.mark
        for i in range(0, len(uids), 500):
            chunk = uids[i : i + 500]
            for uid, other_hash, other_body in self.ledger._all(
                f"SELECT uid, other_hash, other_body FROM conflicts WHERE org = {mark}"  # noqa: S608 - marks only
                f" AND uid IN ({', '.join([mark] * len(chunk))})",
                (org, *chunk),
            ):
                refused.append({"uid": uid, "content_hash": other_hash, "body": _loads(other_body)})
        return {"measurements": found, "conflicts": refused}

    def _kept(self, org: str, uids: list[str]) -> dict[str, str]:
        conn = self.ledger.connection()
        try:
            cur = conn.cursor()
            org_id = self.ledger.org_id(cur, org)
            if not has_erased(cur, self.ledger.mark, org_id):
                return {}
            assert org_id is not None
            return kept_hashes(cur, self.ledger.mark, org_id, uids)
        finally:
            conn.close()

    # -- anchors --------------------------------------------------------------------------

    def record_anchor(self, org: str, journal: str, head: str) -> bool:
        """Move a journal's anchor to ``head`` (``<seq>:<hash>``) if it is further on; keep
        the first head that goes backwards. False if the values are not a journal's."""
        matched = _HEAD.match(head)
        if not _JOURNAL.match(journal) or matched is None:
            return False
        seq, digest = int(matched.group(1)), matched.group(2)
        if self._moved.get((org, journal)) == (seq, digest):
            return True
        now = time.time_ns() // 1_000_000
        a = journal_anchors.c
        where = sa.and_(a.org == org, a.journal == journal)
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(sa.select(a.seq, a.hash, a.regressed).where(where).with_for_update()).first()
                    if row is None:
                        values = {"org": org, "journal": journal, "seq": seq, "hash": digest, "at_ms": now}
                        conn.execute(journal_anchors.insert().values(**values))
                    elif seq > row.seq:
                        conn.execute(journal_anchors.update().where(where).values(seq=seq, hash=digest, at_ms=now))
                    elif (seq, digest) != (row.seq, row.hash) and row.regressed is None:
                        text = f"head {seq}:{digest[:16]}... arrived at {iso(now)} after {row.seq}:{row.hash[:16]}..."
                        conn.execute(journal_anchors.update().where(where).values(regressed=text))
                break
            except sa.exc.IntegrityError:  # another ledger process inserted it first: look again
                if attempt:
                    raise
        self._moved[(org, journal)] = (seq, digest)
        return True

    def anchors(self, org: str, journal: str | None = None) -> list[dict[str, Any]]:
        a = journal_anchors.c
        query = sa.select(a.journal, a.seq, a.hash, a.at_ms, a.regressed).where(a.org == org)
        if journal is not None:
            query = query.where(a.journal == journal)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(a.journal)).all()
        return [{"journal": j, "seq": s, "hash": h, "at": iso(at), "regressed": r or ""} for j, s, h, at, r in rows]


def kept_hashes(cur: Any, mark: str, org_id: int, uids: Iterable[str]) -> dict[str, str]:
    """uid -> the content hash an erased row had when it was ingested, for those of ``uids``
    that were erased or aged."""
    wanted = list(uids)
    out: dict[str, str] = {}
    for i in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[i : i + _IN_CHUNK]
        cur.execute(
            f"SELECT uid, content_hash FROM erased WHERE org_id = {mark}"  # noqa: S608 - marks only
            f" AND uid IN ({', '.join([mark] * len(chunk))})",
            (org_id, *chunk),
        )
        out.update(dict(cur.fetchall()))
    return out


def has_erased(cur: Any, mark: str, org_id: int | None) -> bool:
    """Whether any row of the organisation was erased or aged (one index probe)."""
    if org_id is None:
        return False
    cur.execute(f"SELECT 1 FROM erased WHERE org_id = {mark} LIMIT 1", (org_id,))  # noqa: S608 - a mark
    return cur.fetchone() is not None


def _loads(body: str | None) -> Any:
    try:
        return orjson.loads(body or "")
    except orjson.JSONDecodeError:
        return body


def register(app: "FastAPI", ledger: Ledger, auth: list[Any]) -> None:
    """Add reconciliation's routes and the anchor middleware to the ledger's FastAPI app."""
    from fastapi import Query, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from ..httpserver import BodyError, json_response, read_body

    digests = Digests(ledger)

    class AnchorMiddleware:
        """Records the journal head an authorized ingest request carried (the ingest route
        stays as it is: this sees the request's headers and the response's status)."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            path = _INGEST_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
            if path is None or scope.get("method") != "POST":
                await self.app(scope, receive, send)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            journal, head = headers.get("x-meterkit-journal"), headers.get("x-meterkit-journal-head")
            status = 0

            async def sending(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            await self.app(scope, receive, sending)
            # Any answer past authorization: a batch refused as invalid carried a true head too.
            if journal and head and status < 500 and status not in (401, 403):
                try:
                    await run_in_threadpool(digests.record_anchor, path.group(1), journal, head)
                except sa.exc.SQLAlchemyError as exc:  # the measurements are stored; the next batch anchors
                    logger.warning("meterkit ledger: could not record the journal anchor: %s", exc)

    app.add_middleware(AnchorMiddleware)

    async def json_body(request: Request) -> Any:
        try:
            return orjson.loads(await read_body(request, MAX_BODY_BYTES))
        except (BodyError, orjson.JSONDecodeError):
            return None

    @app.get("/organizations/{org_id}/reconcile/buckets", dependencies=auth)
    async def buckets(
        org_id: str,
        start: str = Query(alias="from"),
        end: str = Query(alias="to"),
        meter: str | None = None,
        account: str | None = None,
    ) -> Response:
        try:
            lo, hi = boundary_ms(start, "from"), boundary_ms(end, "to")
        except InstantError as exc:
            return json_response({"message": str(exc)}, 400)
        found = await run_in_threadpool(digests.buckets, org_id, lo, hi, meter, account)
        return json_response({"buckets": found})

    @app.post("/organizations/{org_id}/reconcile/uids", dependencies=auth)
    async def uids(org_id: str, request: Request) -> Response:
        doc = await json_body(request)
        wanted = doc.get("buckets") if isinstance(doc, dict) else None
        if not isinstance(wanted, list) or not all(_is_bucket(b) for b in wanted):
            return json_response({"message": 'body must be {"buckets": [[meter, account, hour], ...]}'}, 400)
        try:
            found = await run_in_threadpool(digests.listing, org_id, [tuple(b) for b in wanted])
        except InstantError as exc:
            return json_response({"message": str(exc)}, 400)
        return json_response({"uids": found})

    @app.post("/organizations/{org_id}/reconcile/lookup", dependencies=auth)
    async def lookup(org_id: str, request: Request) -> Response:
        doc = await json_body(request)
        wanted = doc.get("uids") if isinstance(doc, dict) else None
        if not isinstance(wanted, list) or len(wanted) > MAX_LOOKUP or not all(isinstance(u, str) for u in wanted):
            return json_response({"message": f'body must be {{"uids": [...]}}, at most {MAX_LOOKUP}'}, 400)
        return json_response(await run_in_threadpool(digests.lookup, org_id, wanted))

    @app.get("/organizations/{org_id}/anchors", dependencies=auth)
    async def list_anchors(org_id: str, journal: str | None = None) -> Response:
        return json_response({"anchors": await run_in_threadpool(digests.anchors, org_id, journal)})


def _is_bucket(b: Any) -> bool:
    return isinstance(b, list) and len(b) == 3 and all(isinstance(x, str) for x in b)
