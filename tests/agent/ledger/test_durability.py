"""An acknowledged measurement survives power loss, and the ledger's file is its owner's."""

from __future__ import annotations

import stat
from pathlib import Path

from meterkit_agent.ledger import Ledger


def test_sqlite_commits_are_fsynced_and_the_file_is_private(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{db}")
    try:
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        ledger.ingest("o", [{"uid": "u1", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z"}])
        for path in (db, db.with_name("ledger.db-wal")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        ledger.close()


def test_an_older_world_readable_ledger_file_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    Ledger(f"sqlite:///{db}").close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
