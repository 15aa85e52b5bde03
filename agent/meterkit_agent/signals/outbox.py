"""The durable outbox: notification events and their deliveries, in the ledger's database.

Two tables, created by :func:`prepare` (SQLite and PostgreSQL alike):

- ``signal_events``: one row per (org, event id), holding the body sent on every attempt.
  The key is the exactly-once: :func:`record` inserts with ``ON CONFLICT DO NOTHING``, so
  however many times, and by however many ledger processes at once, a crossing is seen,
  one event is stored, and :func:`record` returns it as new to one caller only.
- ``signal_deliveries``: one row per (event, endpoint) the event is for, made in the same
  transaction as the event: ``pending`` until the endpoint acknowledges it
  (``delivered``), with the attempts made, when the next is due, and the last error (a
  status or an exception's type: never a URL, a header or a secret). A sender claims a
  delivery for a while (``lease_owner``, ``lease_until_ms``) before sending it, so two
  senders never send it at once, and one that dies mid-send loses nothing: its claim
  runs out and another sender takes the delivery over (:mod:`.deliveries`).

:func:`record` runs in the caller's transaction: called in the transaction that stores
the usage which crossed a threshold, an event exists exactly when that usage does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..instants import boundary_ms, iso
from .events import Event

_DDL = [
    "CREATE TABLE IF NOT EXISTS signal_events (org VARCHAR(100) NOT NULL, event_id VARCHAR(40) NOT NULL,"
    " account VARCHAR(200) NOT NULL, meter VARCHAR(80) NOT NULL, measure VARCHAR(200) NOT NULL,"
    " kind VARCHAR(40) NOT NULL, threshold VARCHAR(80) NOT NULL, period_start_ms BIGINT NOT NULL,"
    " period_end_ms BIGINT NOT NULL, created_ms BIGINT NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (org, event_id))",
    "CREATE INDEX IF NOT EXISTS ix_signal_events_created ON signal_events (org, created_ms)",
    "CREATE TABLE IF NOT EXISTS signal_deliveries (org VARCHAR(100) NOT NULL, event_id VARCHAR(40) NOT NULL,"
    " endpoint VARCHAR(80) NOT NULL, status VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL,"
    " next_attempt_ms BIGINT NOT NULL, lease_owner VARCHAR(64), lease_until_ms BIGINT,"
    " last_error VARCHAR(200), delivered_ms BIGINT, PRIMARY KEY (org, event_id, endpoint))",
    "CREATE INDEX IF NOT EXISTS ix_signal_deliveries_due ON signal_deliveries (status, next_attempt_ms)",
]

_meta = sa.MetaData()
events_table = sa.Table(
    "signal_events",
    _meta,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("event_id", sa.String(40), primary_key=True),
    sa.Column("account", sa.String(200)),
    sa.Column("meter", sa.String(80)),
    sa.Column("measure", sa.String(200)),
    sa.Column("kind", sa.String(40)),
    sa.Column("threshold", sa.String(80)),
    sa.Column("period_start_ms", sa.BigInteger),
    sa.Column("period_end_ms", sa.BigInteger),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("body", sa.Text),
)
deliveries_table = sa.Table(
    "signal_deliveries",
    _meta,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("event_id", sa.String(40), primary_key=True),
    sa.Column("endpoint", sa.String(80), primary_key=True),
    sa.Column("status", sa.String(16)),
    sa.Column("attempts", sa.Integer),
    sa.Column("next_attempt_ms", sa.BigInteger),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until_ms", sa.BigInteger),
    sa.Column("last_error", sa.String(200)),
    sa.Column("delivered_ms", sa.BigInteger),
)

PENDING, DELIVERED = "pending", "delivered"


class Endpoint(Protocol):
    """What :func:`record` needs of a webhook: its name and which kinds it takes
    (:class:`~.settings.WebhookConfig` is one)."""

    @property
    def name(self) -> str: ...

    def wants(self, kind: str) -> bool: ...


def prepare(conn: sa.Connection) -> None:
    """Create the outbox's tables if they are not there (idempotent; in the caller's
    transaction, so the ledger prepares them with its own schema)."""
    for statement in _DDL:
        conn.exec_driver_sql(statement)


def _insert_new(conn: sa.Connection, table: sa.Table, values: dict[str, Any], keys: list[str]) -> bool:
    """Insert unless the key is there; whether this call inserted it. PostgreSQL says so
    with ``RETURNING`` (psycopg reports no row count for this statement); SQLite with the
    row count, which every version with ``ON CONFLICT`` gives."""
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        return conn.execute(pg.returning(table.c[keys[0]])).first() is not None
    lite = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    return conn.execute(lite).rowcount == 1


def record(conn: sa.Connection, events: Iterable[Event], endpoints: Sequence[Endpoint] = ()) -> list[Event]:
    """Store the events not stored before, each with a pending delivery to every endpoint
    that wants its kind, due at once. Returns the events this call stored; one already
    stored, by this process or another, is not returned."""
    new = []
    for event in events:
        row = {
            "org": event.org,
            "event_id": event.id,
            "account": event.account,
            "meter": event.meter,
            "measure": event.measure,
            "kind": event.kind,
            "threshold": event.threshold,
            "period_start_ms": event.period[0],
            "period_end_ms": event.period[1],
            "created_ms": event.occurred_ms,
            "body": event.body().decode(),
        }
        if not _insert_new(conn, events_table, row, ["org", "event_id"]):
            continue
        new.append(event)
        for endpoint in endpoints:
            if endpoint.wants(event.kind):
                delivery = {
                    "org": event.org,
                    "event_id": event.id,
                    "endpoint": endpoint.name,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_ms": event.occurred_ms,
                }
                _insert_new(conn, deliveries_table, delivery, ["org", "event_id", "endpoint"])
    return new


def list_notifications(
    conn: sa.Connection, org: str, account: str | None = None, since: int | str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The organisation's events, oldest first: each its webhook body plus
    ``deliveries`` (endpoint, status, attempts, next attempt, last error, when
    delivered). ``since`` (UTC ms, or an instant as the ledger spells them) keeps those
    recorded at or after it; ``account`` keeps one account's."""
    e, d = events_table, deliveries_table
    query = sa.select(e.c.event_id, e.c.body).where(e.c.org == org)
    if account is not None:
        query = query.where(e.c.account == account)
    if since is not None:
        since_ms = since if isinstance(since, int) else boundary_ms(since, "since")
        query = query.where(e.c.created_ms >= since_ms)
    query = query.order_by(e.c.created_ms, e.c.event_id).limit(limit)
    found = {row.event_id: orjson.loads(row.body) for row in conn.execute(query)}
    for event in found.values():
        event["deliveries"] = []
    if found:
        rows = conn.execute(
            sa.select(d).where(d.c.org == org, d.c.event_id.in_(list(found))).order_by(d.c.event_id, d.c.endpoint)
        )
        for r in rows:
            found[r.event_id]["deliveries"].append(
                {
                    "endpoint": r.endpoint,
                    "status": r.status,
                    "attempts": r.attempts,
                    "next_attempt": iso(r.next_attempt_ms) if r.status == PENDING else None,
                    "last_error": r.last_error,
                    "delivered": iso(r.delivered_ms) if r.delivered_ms is not None else None,
                }
            )
    return list(found.values())
