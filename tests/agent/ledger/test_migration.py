"""A database written by an older ledger (a JSON body per row: times as text only, or with
instants and content digests) is brought up to date when it is opened, on SQLite and
PostgreSQL: its rows moved into the compact layout, the rollups built, an unreadable row
kept aside."""

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


def test_an_older_database_is_migrated_when_opened(old_database: str) -> None:
    ledger = Ledger(old_database)
    try:
        tables = set(sa.inspect(ledger.engine).get_table_names())
        assert {"measurements", "hours", "num_rollup", "unreadable"} <= tables and "measurements_v1" not in tables
        columns = {c["name"] for c in sa.inspect(ledger.engine).get_columns("measurements")}
        assert "body" not in columns and {"series", "ts_ms", "shape", "nums"} <= columns
        for m in OLD_ROWS:  # moved exactly: the same content, the same digest
            stored = ledger.get("o", m["uid"])
            assert stored == m and stored is not None and content_hash(stored) == content_hash(m)
        with ledger.engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT uid, ts, body FROM unreadable")).all()
        assert [tuple(r) for r in kept] == [("garbled", "not a time", "{")]  # kept aside; the ledger opens
        assert ledger.count("o") == 3
        # Periods select by instant, from the rollups built; a re-send is a duplicate or a
        # conflict of the migrated row.
        q = UsageQuery(meter="downloads", target="bytes", start="2026-11-01T01:00:00+01:00", end="2026-12-01")
        assert [r["value"] for r in ledger.usage("o", q)] == [6]
        q = UsageQuery(meter="downloads", target="bytes", start="2026-10-31T23:59:59.999Z", end="2026-11-30T23:00Z")
        assert [r["value"] for r in ledger.usage("o", q)] == [3]
        assert ledger.ingest("o", [OLD_ROWS[0], {**OLD_ROWS[1], "measure": {"bytes": 9}}]) == Ingested(0, 1, 1, ("m2",))
    finally:
        ledger.close()
    again = Ledger(old_database)  # opening again changes nothing and fails nothing
    try:
        assert again.count("o") == 3 and again.get("o", "m3") == OLD_ROWS[2]
    finally:
        again.close()


def test_the_previous_layout_with_instants_and_digests_is_migrated(tmp_path: Path) -> None:
    """The layout just before this one: ts_ms, content_hash and their triggers."""
    url = f"sqlite:///{tmp_path / 'previous.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(OLD_SCHEMA[0])
        conn.exec_driver_sql("ALTER TABLE measurements ADD COLUMN ts_ms BIGINT")
        conn.exec_driver_sql("ALTER TABLE measurements ADD COLUMN content_hash VARCHAR(64)")
        conn.exec_driver_sql(
            "CREATE INDEX ix_measurements_instant ON measurements (org, meter, account, ts_ms, content_hash)"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER measurements_ts_ms AFTER INSERT ON measurements WHEN NEW.ts_ms IS NULL"
            " BEGIN UPDATE measurements SET ts_ms = 0 WHERE org = NEW.org AND uid = NEW.uid; END"
        )
        m = {**OLD_ROWS[1], "ets": "2026-11-01T00:30:00Z", "who": {"user": "ann"}}
        conn.execute(
            sa.text("INSERT INTO measurements VALUES ('o', :uid, :meter, :account, :ts, :body, 1793491200000, :h)"),
            {**m, "body": json.dumps(m), "h": content_hash(m)},
        )
    engine.dispose()
    ledger = Ledger(url)
    try:
        assert ledger.get("o", "m2") == m
        assert ledger.uids("o", start="2026-11-01", end="2026-11-02") == ["m2"]
        q = UsageQuery(meter="downloads", aggregation="UNIQUE", target="user")
        assert [r["value"] for r in ledger.usage("o", q)] == [1]
    finally:
        ledger.close()
