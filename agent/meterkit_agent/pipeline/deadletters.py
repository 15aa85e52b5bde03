"""The dead-letter store: measurements that cannot be delivered as they are, with the
stage and the reason, kept until a person replays them (corrected or not) through the
agent's replay spool."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from meterkit._spool import KIND_MEASUREMENT, SegmentWriter, encode_frame, private_dir
from meterkit._timefmt import iso_ms


class DeadLetters:
    """Measurements that cannot be delivered as they are, with the reason. Kept until replayed."""

    def __init__(self, state_dir: Path) -> None:
        path = private_dir(state_dir) / "deadletter.db"
        fresh = not path.exists()
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS dead_letters (
                   id INTEGER PRIMARY KEY AUTOINCREMENT,
                   at TEXT NOT NULL, stage TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
                   uid TEXT, meter TEXT, account TEXT, body TEXT NOT NULL,
                   replayed_at TEXT)"""
        )
        # A batch replayed after a crash (dead letters stored, journal not yet appended)
        # must not list the same letter twice; once replayed, it may come back anew.
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_waiting ON dead_letters (uid, reason)"
            " WHERE uid IS NOT NULL AND replayed_at IS NULL"
        )

    def add(self, stage: str, entries: list[tuple[Any, str, str]]) -> None:
        """Store (measurement, reason, detail) entries durably, in one transaction."""
        if not entries:
            return
        now = iso_ms(time.time_ns())
        rows = []
        for body, reason, detail in entries:
            m = body if isinstance(body, dict) else {}
            rows.append(
                (
                    now,
                    stage,
                    reason,
                    detail,
                    _s(m.get("uid")),
                    _s(m.get("meter")),
                    _s(m.get("account")),
                    orjson.dumps(body, default=repr).decode(),
                )
            )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO dead_letters (at, stage, reason, detail, uid, meter, account, body)"
                " VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )
            self._db.execute("COMMIT")

    def rows(self, include_replayed: bool = False) -> list[dict[str, Any]]:
        query = "SELECT id, at, stage, reason, detail, uid, meter, account, body, replayed_at FROM dead_letters"
        if not include_replayed:
            query += " WHERE replayed_at IS NULL"
        with self._lock:
            cur = self._db.execute(query + " ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def get(self, dead_id: int) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, at, stage, reason, detail, uid, meter, account, body, replayed_at"
                " FROM dead_letters WHERE id = ?",
                (dead_id,),
            )
            row = cur.fetchone()
            return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def mark_replayed(self, ids: list[int]) -> None:
        now = iso_ms(time.time_ns())
        with self._lock:
            self._db.executemany("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", [(now, i) for i in ids])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").fetchone()[0])

    def close(self) -> None:
        self._db.close()


REPLAY_SPOOL = "replay-spool"


def write_replay(state_dir: Path, measurements: list[Any]) -> Path:
    """Write measurements to the agent's replay spool as one sealed segment."""
    writer = SegmentWriter(state_dir / REPLAY_SPOOL, "replay" + os.urandom(2).hex(), fsync=True)
    writer.write(
        b"".join(encode_frame(KIND_MEASUREMENT, orjson.dumps(m, default=repr)) for m in measurements), len(measurements)
    )
    path = writer.path
    writer.seal()
    assert path is not None
    return path


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) else None
