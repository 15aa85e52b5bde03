"""A database written by an older ledger (times as text only, no content digests) is
brought up to date when it is opened, on SQLite and PostgreSQL; a row written by anything
else than the ledger still gets its instant."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from meterkit._model import content_hash
from meterkit_agent.ledger import Ingested, Ledger, UsageQuery
from tests.agent.ledger.conftest import measurement

#: the schema every ledger before instants and conflicts created
OLD_SCHEMA = [
    "CREATE TABLE measurements (org VARCHAR(100) NOT NULL, uid VARCHAR(100) NOT NULL, meter VARCHAR(80) NOT NULL,"
    " account VARCHAR(200) NOT NULL, ts VARCHAR(24) NOT NULL, body TEXT NOT NULL, PRIMARY KEY (org, uid))",
    "CREATE INDEX ix_measurements_lookup ON measurements (org, meter, account, ts)",
]
OLD_ROWS = [
    measurement("m1", "2026-10-31T23:59:59.999Z", measure={"bytes": 1}),
    measurement("m2", "2026-11-01T00:00:00.000Z", measure={"bytes": 2}),
    measurement("m3", "2026-11-30T23:59:59.999Z", measure={"bytes": 4}),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database of its own holding an older ledger's table and rows."""
    admin = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server: str = request.getfixturevalue("postgres_url")
        name = f"old_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        url = server.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        for statement in OLD_SCHEMA:
            conn.exec_driver_sql(statement)
        for m in OLD_ROWS:
            conn.execute(
                sa.text("INSERT INTO measurements VALUES ('o', :uid, :meter, :account, :ts, :body)"),
                {**m, "body": json.dumps(m)},
            )
        conn.execute(
            sa.text("INSERT INTO measurements VALUES ('o', 'garbled', 'downloads', 'acme', 'not a time', '{')")
        )
    engine.dispose()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def columns_and_indexes(ledger: Ledger) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(ledger.engine)
    columns = {c["name"] for c in inspector.get_columns("measurements")}
    return columns, {str(i["name"]) for i in inspector.get_indexes("measurements")}


def test_an_older_database_is_migrated_when_opened(old_database: str) -> None:
    ledger = Ledger(old_database)
    try:
        columns, indexes = columns_and_indexes(ledger)
        assert {"ts_ms", "content_hash"} <= columns
        assert "ix_measurements_instant" in indexes and "ix_measurements_lookup" not in indexes
        with ledger.engine.connect() as conn:
            stored = {uid: (ts_ms, digest) for uid, ts_ms, digest in conn.execute(sa.text(
                "SELECT uid, ts_ms, content_hash FROM measurements"
            ))}  # fmt: skip
        assert stored["m2"] == (1_793_491_200_000, content_hash(OLD_ROWS[1]))
        assert stored["m1"][0] == 1_793_491_199_999 and stored["m3"][0] == 1_796_083_199_999
        assert stored["garbled"] == (None, None)  # unreadable: kept, in no period, and the ledger opens
        # Periods select by instant; a re-send is a duplicate or a conflict of the migrated row.
        q = UsageQuery(meter="downloads", target="bytes", start="2026-11-01T01:00:00+01:00", end="2026-12-01")
        assert [r["value"] for r in ledger.usage("o", q)] == [6]
        assert ledger.ingest("o", [OLD_ROWS[0], {**OLD_ROWS[1], "measure": {"bytes": 9}}]) == Ingested(0, 1, 1, ("m2",))
    finally:
        ledger.close()
    Ledger(old_database).close()  # opening again changes nothing and fails nothing


def test_a_row_written_without_its_instant_gets_one(old_database: str) -> None:
    """An older ledger process still writing during an upgrade, or a hand-written INSERT."""
    ledger = Ledger(old_database)
    try:
        m = measurement("hand", "2026-11-15T12:00:00.250Z", measure={"bytes": 100})
        with ledger.engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO measurements (org, uid, meter, account, ts, body) VALUES ('o', 'hand', :meter, :account, :ts, :body)"),
                {**m, "body": json.dumps(m)},
            )  # fmt: skip
        assert ledger.uids("o", start="2026-11-15T12:00:00.250Z", end="2026-11-15T12:00:00.251Z") == ["hand"]
        assert ledger.ingest("o", [m]) == Ingested(0, 1)  # its digest is computed from its body
    finally:
        ledger.close()


def test_a_sqlite_migration_cut_short_is_finished_by_the_next_open(tmp_path: Path) -> None:
    """SQLite commits each ALTER on its own: columns added, the process killed before they
    were filled. The next open fills them."""
    url = f"sqlite:///{tmp_path / 'cut.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in OLD_SCHEMA:
            conn.exec_driver_sql(statement)
        m = OLD_ROWS[1]
        conn.execute(
            sa.text("INSERT INTO measurements VALUES ('o', :uid, :meter, :account, :ts, :body)"),
            {**m, "body": json.dumps(m)},
        )
        conn.exec_driver_sql("ALTER TABLE measurements ADD COLUMN ts_ms BIGINT")
        conn.exec_driver_sql("ALTER TABLE measurements ADD COLUMN content_hash VARCHAR(64)")
    engine.dispose()
    ledger = Ledger(url)
    try:
        assert ledger.uids("o", start="2026-11-01", end="2026-11-02") == ["m2"]
    finally:
        ledger.close()
