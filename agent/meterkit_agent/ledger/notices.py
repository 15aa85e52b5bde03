"""The ledger's routes for limits and notifications.

- ``GET /organizations/{orgId}/balances?as_of=``: the cap balances the agent's balance
  keeper polls (:mod:`.balances`; docs/limits.md gives the snapshot it writes from them).
  ``as_of`` is an instant as the ledger spells them (default: now). A ledger started
  without ``--plans`` answers 404 ``started without --plans``.
- ``GET /organizations/{orgId}/notifications?account=&since=&limit=``: the notification
  events recorded in the outbox, oldest first, each with its webhook deliveries
  (:func:`..signals.list_notifications`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..billing import Plans
from ..httpserver import json_response
from ..instants import InstantError, boundary_ms
from ..signals import list_notifications
from .balances import balances
from .store import Ledger


def notice_routes(ledger: Ledger, plans: Plans | None, auth: Sequence[Any]) -> APIRouter:
    """The balances and notifications routes; ``auth`` are the API's dependencies."""
    router = APIRouter(dependencies=list(auth))

    @router.get("/organizations/{org_id}/balances")
    async def get_balances(org_id: str, as_of: str | None = None) -> Response:
        """Each account's usage to date of each cap of its plan, and the thresholds notified."""
        if plans is None:
            return _error(404, "started without --plans: no caps, no balances")
        try:
            at = time.time_ns() // 1_000_000 if as_of is None else boundary_ms(as_of, "as_of")
        except InstantError as exc:
            return _error(400, str(exc))
        return json_response(await run_in_threadpool(balances, ledger, plans, org_id, at))

    @router.get("/organizations/{org_id}/notifications")
    async def get_notifications(
        org_id: str,
        account: str | None = None,
        since: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """The organisation's notification events, oldest first, with their deliveries."""
        try:
            since_ms = None if since is None else boundary_ms(since, "since")
        except InstantError as exc:
            return _error(400, str(exc))
        found = await run_in_threadpool(_listed, ledger, org_id, account, since_ms, limit)
        return json_response({"notifications": found})

    return router


def _listed(ledger: Ledger, org: str, account: str | None, since_ms: int | None, limit: int) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return list_notifications(conn, org, account, since_ms, limit)


def _error(status: int, message: str) -> Response:
    return json_response({"message": message}, status)
