"""One ledger per module and database (SQLite, PostgreSQL), shared by a module's tests and
examples; each test writes into organisations of its own, so nothing needs emptying."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import create_app
from tests.agent.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
_orgs = itertools.count()


def ledger_url(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    return f"sqlite:///{folder / 'ledger.db'}" if kind == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url(request.param, request, tmp_path_factory.mktemp("ledger")))
    yield ledger
    ledger.close()


@pytest.fixture(scope="module")
def shared_api(shared_ledger: Ledger) -> TestClient:
    return TestClient(create_app(shared_ledger, token=TOKEN))


def fresh_org() -> str:
    """An organisation no other test or example writes to (the PostgreSQL server is one
    per session)."""
    return f"t{next(_orgs)}-{uuid.uuid4().hex[:8]}"


def measurement(uid: str, ts: str, account: str = "acme", meter: str = "downloads", **fields: Any) -> dict[str, Any]:
    return {"uid": uid, "meter": meter, "account": account, "ts": ts, **fields}


def wipe(ledger: Ledger, *orgs: str) -> None:
    """Delete everything stored for these organisations (a database shared by a session)."""
    mark = ledger.mark
    marks = ", ".join([mark] * len(orgs))
    series = f"SELECT id FROM series WHERE org IN ({marks})"
    statements = [
        f"DELETE FROM {table} WHERE series IN ({series})"
        for table in ("measurements", "hours", "num_rollup", "str_rollup", "voids")
    ]
    org_ids = f"SELECT id FROM orgs WHERE org IN ({marks})"
    statements += [
        f"DELETE FROM {table} WHERE org_id IN ({org_ids})" for table in ("corrections", "orphans", "batches")
    ]
    if ledger.postgres:
        statements.append(f"DELETE FROM uids WHERE org_id IN ({org_ids})")
    statements.append(f"DELETE FROM conflicts WHERE org IN ({marks})")
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        if not ledger.postgres:
            cur.execute("BEGIN IMMEDIATE")
        for statement in statements:
            cur.execute(statement, orgs)
        conn.commit()
    finally:
        conn.close()
