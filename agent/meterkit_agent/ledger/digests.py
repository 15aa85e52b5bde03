"""What reconciliation asks of a ledger: per-bucket content digests, the uids of a bucket
with their content hashes, stored measurements by uid, and the audit journal anchors.

- **Bucket digests** (``GET .../reconcile/buckets?from&to[&meter][&account]``): per
  (meter, account, UTC hour) the count and the content digest of the rows stored, as
  :mod:`..contentdigest` defines it, computed from the rows at the time of asking. Not
  kept as rollups updated at ingest: a rollup says what was ingested, and would miss
  exactly the edits to stored rows that reconciliation exists to find. SQL does the
  grouping and concatenates each bucket's hashes (one query per meter and account, on the
  ``(org, meter, account, ts_ms)`` index), Python folds each concatenation at C speed.
- **Uid listings** (``POST .../reconcile/uids``): ``[uid, meter, account, hour,
  content_hash]`` for the buckets a drill-down names.
- **Lookup** (``POST .../reconcile/lookup``): stored measurements by uid, wherever they
  are, and the conflicting re-sends the ledger refused for them.
- **Anchors** (``GET .../anchors``): every authorized ingest request that carries
  ``X-Meterkit-Journal`` and ``X-Meterkit-Journal-Head: <seq>:<hash>`` moves that
  journal's anchor forward (accepted or refused as invalid: the head is true either way).
  A head that goes backwards (a journal cut, then written on) never replaces the anchor,
  and is kept in ``regressed``.

A row whose ``content_hash`` is NULL (written by something other than the ledger's ingest)
is hashed from its body. So is one whose body was edited in place: a trigger clears the
stored hash when ``body`` changes and ``content_hash`` does not.
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

from ..contentdigest import Digest, fold_joined
from .instants import HOUR_MS, InstantError, boundary_ms, iso
from .schema import conflicts, measurements
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
_IN_CHUNK = 500  # uids per IN (...) list, well under every SQLite build's variable limit
MAX_BODY_BYTES = 4_000_000
MAX_LOOKUP = 5_000

_STALE_TRIGGER_SQLITE = """
CREATE TRIGGER IF NOT EXISTS measurements_content_stale AFTER UPDATE OF body ON measurements
WHEN NEW.body IS NOT OLD.body AND NEW.content_hash IS OLD.content_hash
BEGIN
    UPDATE measurements SET content_hash = NULL WHERE org = NEW.org AND uid = NEW.uid;
END
"""
_STALE_FUNCTION_POSTGRES = """
CREATE OR REPLACE FUNCTION meterkit_content_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body IS DISTINCT FROM OLD.body AND NEW.content_hash IS NOT DISTINCT FROM OLD.content_hash THEN
        NEW.content_hash := NULL;
    END IF;
    RETURN NEW;
END
$$
"""


@functools.lru_cache(maxsize=8192)
def hour_text(hour_ms: int) -> str:
    """An hour as the journal writes it (``meterkit._model.tally``): ``...T10:00:00Z``."""
    return iso(hour_ms)[:13] + ":00:00Z"


def hour_ms(text: str) -> int:
    return boundary_ms(text, "hour") // HOUR_MS * HOUR_MS


class Digests:
    """Reconciliation's queries over one ledger database, and its anchors."""

    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine
        self.postgres = self.engine.dialect.name == "postgresql"
        self._concat = "string_agg(content_hash, '')" if self.postgres else "group_concat(content_hash, '')"
        self._moved: dict[tuple[str, str], tuple[int, str]] = {}  # the last anchor written, per journal
        with self.engine.begin() as conn:
            _meta.create_all(conn)
            if self.postgres:
                conn.exec_driver_sql(_STALE_FUNCTION_POSTGRES)
                if not conn.exec_driver_sql(
                    "SELECT 1 FROM pg_trigger WHERE tgname = 'measurements_content_stale'"
                ).first():
                    conn.exec_driver_sql(
                        "CREATE TRIGGER measurements_content_stale BEFORE UPDATE ON measurements"
                        " FOR EACH ROW EXECUTE FUNCTION meterkit_content_stale()"
                    )
            else:
                conn.exec_driver_sql(_STALE_TRIGGER_SQLITE)

    # -- digests and listings -------------------------------------------------------------

    def pairs(self, org: str, meter: str | None = None, account: str | None = None) -> list[tuple[str, str]]:
        """Every (meter, account) the organisation has rows for: a loose index scan, one
        index probe per pair, not a pass over every row."""
        c = measurements.c
        found: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            meters = [meter] if meter is not None else []
            if meter is None:
                m = self._next(conn, sa.select(c.meter).where(c.org == org), c.meter)
                while m is not None:
                    meters.append(m)
                    m = self._next(conn, sa.select(c.meter).where(c.org == org, c.meter > m), c.meter)
            for m in meters:
                if account is not None:
                    hit = sa.select(c.account).where(c.org == org, c.meter == m, c.account == account)
                    found.extend((m, a) for a in [self._next(conn, hit, c.account)] if a is not None)
                    continue
                a = self._next(conn, sa.select(c.account).where(c.org == org, c.meter == m), c.account)
                while a is not None:
                    found.append((m, a))
                    a = self._next(
                        conn, sa.select(c.account).where(c.org == org, c.meter == m, c.account > a), c.account
                    )
        return found

    @staticmethod
    def _next(conn: sa.Connection, query: sa.Select[Any], column: Any) -> Any:
        return conn.execute(query.order_by(column).limit(1)).scalar()

    def buckets(
        self, org: str, start_ms: int, end_ms: int, meter: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        """Per (meter, account, hour) in ``[start_ms, end_ms)``: count and content digest."""
        sql = sa.text(
            f"SELECT ts_ms / {HOUR_MS}, count(*), {self._concat} FROM measurements"  # noqa: S608 - no user input
            " WHERE org = :org AND meter = :meter AND account = :account AND ts_ms >= :lo AND ts_ms < :hi"
            " GROUP BY ts_ms / 3600000"
        )
        out = []
        pairs = self.pairs(org, meter, account)
        with self.engine.connect() as conn:
            for m, a in pairs:
                params = {"org": org, "meter": m, "account": a, "lo": start_ms, "hi": end_ms}
                for hour, count, joined in conn.execute(sql, params):
                    try:
                        digest = fold_joined(joined or "", count)  # ValueError: a NULL or malformed hash
                    except ValueError:
                        digest = self._rehash(conn, org, m, a, hour * HOUR_MS)
                    out.append({"meter": m, "account": a, "hour": hour_text(hour * HOUR_MS), "count": count})
                    out[-1].update(digest.as_json())
        return out

    def _rehash(self, conn: sa.Connection, org: str, meter: str, account: str, start: int) -> Digest:
        """A bucket with a row lacking a well-formed hash: row by row, from bodies where needed."""
        digest = Digest()
        for _uid, _hour, h in self._rows(conn, org, meter, account, start, start + HOUR_MS):
            digest.add(h)
        return digest

    def _rows(
        self, conn: sa.Connection, org: str, meter: str, account: str, lo: int, hi: int
    ) -> Iterator[tuple[str, int, str]]:
        c = measurements.c
        query = sa.select(c.uid, c.ts_ms, c.content_hash, sa.case((c.content_hash.is_(None), c.body))).where(
            c.org == org, c.meter == meter, c.account == account, c.ts_ms >= lo, c.ts_ms < hi
        )
        for uid, ts_ms, stored, body in conn.execute(query):
            yield uid, ts_ms // HOUR_MS * HOUR_MS, _hash_of(stored, body)

    def listing(self, org: str, buckets: Iterable[tuple[str, str, str]]) -> list[list[str]]:
        """``[uid, meter, account, hour, content_hash]`` for every row of the buckets."""
        hours: dict[tuple[str, str], set[int]] = defaultdict(set)
        for meter, account, text in buckets:
            hours[(meter, account)].add(hour_ms(text))
        out = []
        with self.engine.connect() as conn:
            for (meter, account), wanted in sorted(hours.items()):
                for uid, start, h in self._rows(conn, org, meter, account, min(wanted), max(wanted) + HOUR_MS):
                    if start in wanted:
                        out.append([uid, meter, account, hour_text(start), h])
        return out

    def lookup(self, org: str, uids: list[str]) -> dict[str, Any]:
        """Stored measurements by uid (``measurements``: uid, meter, account, hour,
        content_hash, body) and the conflicting re-sends refused for them (``conflicts``)."""
        c, k = measurements.c, conflicts.c
        found: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for i in range(0, len(uids), _IN_CHUNK):
                chunk = uids[i : i + _IN_CHUNK]
                query = sa.select(c.uid, c.meter, c.account, c.ts_ms, c.content_hash, c.body)
                for uid, meter, account, ts_ms, stored, body in conn.execute(
                    query.where(c.org == org, c.uid.in_(chunk))
                ):
                    hour = hour_text(ts_ms // HOUR_MS * HOUR_MS) if ts_ms is not None else ""
                    entry = {"uid": uid, "meter": meter, "account": account, "hour": hour}
                    found.append({**entry, "content_hash": _hash_of(stored, body), "body": _loads(body)})
                query = sa.select(k.uid, k.other_hash, k.other_body).where(k.org == org, k.uid.in_(chunk))
                for row in conn.execute(query):
                    refused.append({"uid": row.uid, "content_hash": row.other_hash, "body": _loads(row.other_body)})
        return {"measurements": found, "conflicts": refused}

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


def _hash_of(stored: str | None, body: str | None) -> str:
    if stored is not None and len(stored) == 64:
        return stored
    try:
        return content_hash(orjson.loads(body or ""))
    except orjson.JSONDecodeError:
        return "0" * 64  # not a measurement at all: matches nothing that was delivered


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
