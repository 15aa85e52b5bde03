"""An outbox in a real database for each test: a SQLite file, or a database of its own on
the session's PostgreSQL server, through the engine the ledger itself makes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from meterkit_agent.ledger.schema import make_engine
from meterkit_agent.signals import prepare


def fresh_database(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    """The URL of an empty database: a new SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{folder / 'outbox.db'}"
    server: str = request.getfixturevalue("postgres_url")
    name = f"signals_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = fresh_database(request.param, request, tmp_path)
    engine = make_engine(url)
    with engine.connect() as conn, conn.execution_options(immediate=True).begin():
        prepare(conn)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    made = make_engine(db_url)
    yield made
    made.dispose()


def write(engine: sa.Engine) -> sa.Connection:
    """A connection whose transactions take SQLite's write lock at once, as the ledger's."""
    return engine.connect().execution_options(immediate=True)
