"""A delivery's life in the outbox: due, claimed, then delivered or rescheduled.

Every step is one short transaction of its own, and every write is conditional, so any
number of senders in any number of processes can share one outbox:

- :func:`due` lists pending deliveries whose time has come and that nobody holds;
- :func:`claim` takes one for ``lease_ms`` (an ``UPDATE ... WHERE`` nobody holds it: one
  sender wins, the others see no row changed);
- :func:`acknowledged` marks it delivered, :func:`reschedule` counts the failed attempt and
  sets the next; both only while the caller still holds the claim, so a sender that
  outlived its claim cannot undo the work of the one that took it over.

A sender that dies while holding a claim leaves the delivery pending: once the claim
runs out it is due again. The receiver may then see the event twice (the first attempt
may have arrived, unacknowledged), with the same id and body: at-least-once transport,
exactly-once by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .outbox import DELIVERED, PENDING, deliveries_table, events_table

#: the longest error text kept (a status line or an exception's type name)
MAX_ERROR = 200


@dataclass(frozen=True)
class Due:
    """A delivery to attempt: which event, to which endpoint, the attempts made so far,
    and the body to send."""

    org: str
    event_id: str
    endpoint: str
    attempts: int
    body: bytes


def _key(d: Due) -> sa.ColumnElement[bool]:
    t = deliveries_table
    return sa.and_(t.c.org == d.org, t.c.event_id == d.event_id, t.c.endpoint == d.endpoint)


def _free(now_ms: int) -> sa.ColumnElement[bool]:
    t = deliveries_table
    return sa.or_(t.c.lease_until_ms.is_(None), t.c.lease_until_ms <= now_ms)


def due(conn: sa.Connection, endpoints: Sequence[str], now_ms: int, limit: int) -> list[Due]:
    """Up to ``limit`` pending deliveries to ``endpoints`` due by ``now_ms`` and held by
    nobody, longest waiting first."""
    if not endpoints:
        return []
    d, e = deliveries_table, events_table
    query = (
        sa.select(d.c.org, d.c.event_id, d.c.endpoint, d.c.attempts, e.c.body)
        .join(e, sa.and_(e.c.org == d.c.org, e.c.event_id == d.c.event_id))
        .where(d.c.status == PENDING, d.c.next_attempt_ms <= now_ms, d.c.endpoint.in_(list(endpoints)), _free(now_ms))
        .order_by(d.c.next_attempt_ms, d.c.org, d.c.event_id, d.c.endpoint)
        .limit(limit)
    )
    return [Due(r.org, r.event_id, r.endpoint, r.attempts, r.body.encode()) for r in conn.execute(query)]


def claim(conn: sa.Connection, delivery: Due, owner: str, now_ms: int, lease_ms: int) -> bool:
    """Hold ``delivery`` for ``lease_ms``; False if it was delivered or taken meanwhile."""
    t = deliveries_table
    statement = (
        sa.update(t)
        .where(_key(delivery), t.c.status == PENDING, t.c.next_attempt_ms <= now_ms, _free(now_ms))
        .values(lease_owner=owner, lease_until_ms=now_ms + lease_ms)
    )
    return conn.execute(statement).rowcount == 1


def acknowledged(conn: sa.Connection, delivery: Due, owner: str, now_ms: int) -> bool:
    """The endpoint acknowledged it: delivered, never sent again."""
    t = deliveries_table
    statement = (
        sa.update(t)
        .where(_key(delivery), t.c.status == PENDING, t.c.lease_owner == owner)
        .values(
            status=DELIVERED,
            attempts=t.c.attempts + 1,
            delivered_ms=now_ms,
            last_error=None,
            lease_owner=None,
            lease_until_ms=None,
        )
    )
    return conn.execute(statement).rowcount == 1


def reschedule(conn: sa.Connection, delivery: Due, owner: str, next_ms: int, error: str) -> bool:
    """The attempt failed: count it, say why, and make the delivery due at ``next_ms``."""
    t = deliveries_table
    statement = (
        sa.update(t)
        .where(_key(delivery), t.c.status == PENDING, t.c.lease_owner == owner)
        .values(
            attempts=t.c.attempts + 1,
            next_attempt_ms=next_ms,
            last_error=error[:MAX_ERROR],
            lease_owner=None,
            lease_until_ms=None,
        )
    )
    return conn.execute(statement).rowcount == 1
