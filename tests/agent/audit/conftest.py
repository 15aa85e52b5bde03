"""What the audit tests share: a :class:`Scenario` that runs a real ledger and a real agent
as processes, records measurements through the SDK, and tampers with the ledger's
database and the agent's journal the way a person with access to them could."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit_agent.audit.journal import GENESIS, expand_uids, link_hash
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.codec import Codec
from meterkit_agent.ledger.digests import Digests, hour_ms
from meterkit_agent.ledger.ingest import uid_key
from meterkit_agent.ledger.rollups import signed64
from tests.agent.conftest import TOKEN, LedgerServer, Proc, cli_cmd, start_ledger, wait_for
from tests.conftest import CATALOG

ORG = "test-org"
PERIOD = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")


class Scenario:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.spool = tmp_path / "spool"
        self.state = tmp_path / "agent-state"
        self.journal = self.state / "journal.jsonl"
        self.ledger: LedgerServer = start_ledger(tmp_path / "ledger", extra=("--catalog", str(CATALOG)))
        self.config = tmp_path / "agent.yaml"
        self.config.write_text(
            f"""
receivers: {{spool: {{directory: {self.spool}, poll_interval_millis: 50}}}}
processors: {{validate: {{}}, batch: {{max_measurements: 100, timeout_millis: 50}}}}
exporters:
  m3ter: {{base_url: "{self.ledger.url}", org_id: test-org, token: {TOKEN}, retry: {{initial_interval_millis: 20, max_interval_millis: 200}}}}
service: {{state_dir: {self.state}, retain_segments_hours: 1, pipelines: {{usage: {{receivers: [spool], processors: [validate, batch], exporters: [m3ter]}}}}}}
"""
        )
        self.agent: Proc | None = None

    def record(self) -> dict[str, int]:
        # Frames of at most 50 measurements: the agent delivers whole frames, so the batch
        # processor's 100 gives several deliveries (and journal heads for the ledger to anchor).
        client = meterkit.Client(spool_dir=self.spool, flush_interval_millis=20, max_batch_size=50)
        expected = {"acme": 0, "globex": 0}
        for i in range(300):
            account = "acme" if i % 3 else "globex"
            client.record("data_downloaded", account=account, measure={"bytes": i}, who={"user": f"u{i % 4}"})
            expected[account] += 1
        client.record("data_downloaded", account="acme", measure={"bytes": float("nan")})  # lost in the SDK
        client.record("unknown_meter", account="acme", measure={"n": 1})  # refused by the ledger
        client.record("unknown_meter", account="acme", measure={"n": 2})
        assert client.shutdown(10)
        return expected

    def start_agent(self) -> None:
        log = self.tmp / "agent.log"
        before = log.read_text().count("started") if log.exists() else 0
        agent = self.agent = Proc(cli_cmd("agent", "run", "--config", str(self.config), "-v"), log).start()
        # an agent that exits fails the test now, with what it said, not after the whole wait
        wait_for(lambda: log.read_text().count("started") > before or not agent.alive(), what="agent start")
        assert agent.alive(), log.read_text()[-2000:]

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.alive():
            assert self.agent.kill(signal.SIGTERM) == 0
        self.agent = None

    def deliver(self, count: int = 300) -> None:
        self.start_agent()
        wait_for(lambda: self.ledger.count() >= count, timeout=60, what="delivery")
        wait_for(lambda: not list(self.spool.glob("*.mks")), timeout=30, what="retirement")
        self.stop_agent()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=120, check=False)

    def reconcile(self, *extra: str) -> tuple[int, dict[str, Any], str]:
        done = self.cli("reconcile", "--config", str(self.config), *PERIOD, "--json", *extra)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else {}), done.stderr

    def verify(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = self.cli("audit", "verify", "--config", str(self.config), *extra)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def ledger_db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.tmp / "ledger" / "ledger.db")

    def close(self) -> None:
        self.stop_agent()
        self.ledger.proc.kill()

    # -- what is where -------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.journal.read_bytes().splitlines()]

    def deliveries(self) -> list[dict[str, Any]]:
        """Each delivery entry, with ``_uids``: the set of uids it delivered."""
        out = []
        for e in self.entries():
            if e["type"] == "delivery":
                e["_uids"] = {u for s in e["sources"] for u in expand_uids(s["uids"])}
                out.append(e)
        return out

    def open_ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.tmp / 'ledger' / 'ledger.db'}")

    def stored(self, account: str) -> dict[str, dict[str, Any]]:
        """uid -> body of what the ledger holds for an account of data_downloaded."""
        ledger = self.open_ledger()
        try:
            return {m["uid"]: m for m in ledger.rows(ORG, "data_downloaded", account)}
        finally:
            ledger.close()

    # -- tampering -----------------------------------------------------------------------

    def edit_value(self, uid: str, delta: int, rehash: bool = False) -> None:
        """Change a stored measurement's bytes in its row (a trigger marks its hour's
        rollup dirty). ``rehash``: the careful forger, who also makes the hour's rollup
        agree with the edited rows and clears the mark."""
        ledger = self.open_ledger()
        try:
            body = ledger.get(ORG, uid)
            assert body is not None
            body["measure"]["bytes"] += delta
            _, _, nums, _ = Codec().split(body)
            with self.ledger_db() as db:
                db.execute("UPDATE measurements SET nums=? WHERE uid=?", (nums, uid_key(uid)))
            if rehash:
                hour = hour_ms(body["ts"])
                (bucket,) = Digests(ledger).buckets(ORG, hour, hour + 3_600_000, body["meter"], body["account"])
                with self.ledger_db() as db:
                    db.execute(
                        "UPDATE hours SET content=?, check_xor=?, dirty=0 WHERE hour=?"
                        " AND series=(SELECT series FROM measurements WHERE uid=?)",
                        (bucket["content"], signed64(int(bucket["check"], 16)), hour // 3_600_000, uid_key(uid)),
                    )
        finally:
            ledger.close()

    def delete(self, *uids: str) -> None:
        with self.ledger_db() as db:
            db.execute(
                f"DELETE FROM measurements WHERE uid IN ({','.join('?' * len(uids))})", [uid_key(u) for u in uids]
            )

    def forge(self, like: dict[str, Any], uid: str, **changes: Any) -> None:
        """Insert a measurement no agent delivered, as a hand-written INSERT would (the
        rollups know nothing of it)."""
        body = {**like, "uid": uid, **changes}
        ms, template, nums, extra = Codec().split(body)
        with self.ledger_db() as db:
            db.execute("INSERT OR IGNORE INTO shapes (template) VALUES (?)", (template,))
            db.execute(
                "INSERT INTO measurements (org_id, series, ts_ms, uid, shape, nums, extra) VALUES ("
                "(SELECT id FROM orgs WHERE org=?), (SELECT id FROM series WHERE org=? AND meter=? AND account=?),"
                " ?, ?, (SELECT id FROM shapes WHERE template=?), ?, ?)",
                (ORG, ORG, body["meter"], body["account"], ms, uid_key(uid), template, nums, extra),
            )

    def rewrite_journal(self, entries: list[dict[str, Any]], key: bytes | None = None) -> None:
        """Write entries back with a recomputed chain: unkeyed, what someone without the
        journal's key can do, or keyed with ``key``, what someone holding it can."""
        prev, lines = GENESIS, []
        for seq, entry in enumerate(entries, start=1):
            body = {k: v for k, v in entry.items() if k not in ("hash", "_uids")}
            body["seq"], body["prev"] = seq, prev
            prev = link_hash(prev, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), key)
            lines.append(orjson.dumps({**body, "hash": prev}) + b"\n")
        self.journal.write_bytes(b"".join(lines))


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path)
    yield s
    s.close()


def kinds(report: dict[str, Any]) -> set[tuple[str, str, int, bool]]:
    return {(d["kind"], d["account"], d["count"], d["explained"]) for d in report["differences"]}


def named(report: dict[str, Any], kind: str) -> dict[str, str]:
    """uid -> detail of every measurement a difference of this kind names."""
    return {u["uid"]: u["detail"] for d in report["differences"] if d["kind"] == kind for u in d.get("uids", [])}
