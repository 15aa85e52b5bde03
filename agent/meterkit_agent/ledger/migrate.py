"""Moving an older ledger's measurements (one JSON ``body`` per row, renamed
``measurements_v1`` by :func:`.schema.prepare`) into the compact layout, with their
rollups, inside the transaction that prepares the schema: a crash leaves the old table as
it was, and the next open starts again.

Each row goes through the same :class:`.ingest.Writer` as an ingest, so what is stored and
rolled up is what an ingest of that body would have stored. A row whose body is not a
measurement (not JSON, a uid, meter or account other than its row's) or whose time cannot
be read is kept as it was in ``unreadable``: no period holds it, and the ledger opens.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import sqlalchemy as sa

from .ingest import Writer, partition_sql

_PAGE = 5000


def migrate(conn: sa.Connection, postgres: bool) -> None:
    """Move every row of ``measurements_v1`` and drop it."""
    writer = Writer(postgres)
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    mark = "%s" if postgres else "?"
    after: tuple[str, str] = ("", "")
    while True:
        cur.execute(
            "SELECT org, uid, meter, account, ts, body FROM measurements_v1"  # noqa: S608 - marks only
            f" WHERE org > {mark} OR (org = {mark} AND uid > {mark}) ORDER BY org, uid LIMIT {_PAGE}",
            (after[0], after[0], after[1]),
        )
        page = cur.fetchall()
        if not page:
            break
        by_org: dict[str, list[dict[str, Any]]] = defaultdict(list)
        bad = []
        for org, uid, meter, account, ts, body in page:
            record = _readable(uid, meter, account, body)
            if record is None:
                bad.append((org, uid, meter, account, ts, body))
                continue
            try:
                writer.codec.instant(record.get("ts"))
            except ValueError:
                bad.append((org, uid, meter, account, ts, body))
                continue
            by_org[org].append(record)
        for org, records in sorted(by_org.items()):
            rows = writer.split(records)
            if postgres:
                for start in sorted(writer.months_of(rows)):
                    cur.execute(partition_sql(start))
                    writer.months.add(start)
            writer.write(cur, org, rows)
        if bad:
            cur.executemany(
                f"INSERT INTO unreadable (org, uid, meter, account, ts, body) VALUES ({', '.join([mark] * 6)})"  # noqa: S608
                " ON CONFLICT DO NOTHING",
                bad,
            )
        after = (page[-1][0], page[-1][1])
    writer.committed()
    cur.execute("DROP TABLE measurements_v1")


def _readable(uid: str, meter: str, account: str, body: Any) -> dict[str, Any] | None:
    try:
        record = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(record, dict):
        return None
    if (record.get("uid"), record.get("meter"), record.get("account")) != (uid, meter, account):
        return None
    return record
