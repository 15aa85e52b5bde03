"""``sink="direct"``: the process posts its measurements itself (``meterkit._directsink``),
tested against a real ledger process on 127.0.0.1, through a proxy that answers 503 on
command. Here rather than under ``tests/sdk``: the SDK's tests never start the agent's
processes (``tests/sdk/test_install_alone.py``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import meterkit
from tests.agent.conftest import TOKEN, FaultProxy, LedgerServer, free_port, start_ledger, token_file

ORG = "test-org"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path_factory.mktemp("ledger"))
    yield server
    server.proc.kill()


@pytest.fixture(scope="module")
def proxy(ledger: LedgerServer) -> Iterator[FaultProxy]:
    p = FaultProxy(ledger.url)
    yield p
    p.close()


def direct_env(url: str, monkeypatch: pytest.MonkeyPatch, timeout: str = "10") -> None:
    monkeypatch.setenv("METERKIT_SINK", "direct")
    monkeypatch.setenv("METERKIT_DIRECT_URL", f"{url}/organizations/{ORG}/measurements")
    monkeypatch.setenv("METERKIT_DIRECT_TOKEN", TOKEN)
    monkeypatch.setenv("METERKIT_DIRECT_TIMEOUT_SECONDS", timeout)


def stored_uids(ledger: LedgerServer) -> list[str]:
    """Every uid the ledger stores (``codec.uid_key``: a UUID as its 16 bytes)."""
    path = ledger.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT uid FROM measurements").fetchall()
    return [str(uuid.UUID(bytes=u)) if isinstance(u, bytes) else u for (u,) in rows]


def client(tmp_path: Path) -> meterkit.Client:
    return meterkit.Client(spool_dir=tmp_path / "spool", flush_interval_millis=20)


def test_each_measurement_arrives_once_with_its_uid(
    ledger: LedgerServer, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_env(proxy.url, monkeypatch)
    c = client(tmp_path)
    for i in range(25):
        c.record("api_calls", account="acme", measure={"calls": i})
    c.record("api_calls", account="acme", measure={"calls": 1}, uid="given-uid-1")
    assert c.flush(timeout=20)
    prefix = c._uids.prefix
    c.shutdown()
    mine = [u for u in stored_uids(ledger) if u.startswith(prefix) or u == "given-uid-1"]
    assert len(mine) == 26 and len(set(mine)) == 26
    assert "given-uid-1" in mine
    assert c.stats()["lost"] == {}
    assert c.stats()["written"] == 26
    assert not list((tmp_path / "spool").glob("*.seg*")), "nothing goes to the spool"


def test_two_503s_then_200_delivers_everything_once(
    ledger: LedgerServer, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_env(proxy.url, monkeypatch)
    c = client(tmp_path)
    seen_before = len(proxy.seen)
    proxy.plan = [503, 503]
    for i in range(10):
        c.record("api_calls", account="beta", measure={"calls": i})
    assert c.flush(timeout=20)
    prefix = c._uids.prefix
    c.shutdown()
    tries = proxy.seen[seen_before:]
    assert len(tries) == 3
    keys = {t["idempotency-key"] for t in tries}
    assert len(keys) == 1, "a retry is the same request"
    mine = [u for u in stored_uids(ledger) if u.startswith(prefix)]
    assert len(mine) == 10 and len(set(mine)) == 10
    assert c.stats()["lost"] == {}


def test_a_dead_server_past_the_budget_counts_losses_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_env(f"http://127.0.0.1:{free_port()}", monkeypatch, timeout="0.5")
    c = client(tmp_path)
    for i in range(5):
        c.record("api_calls", account="gamma", measure={"calls": i})
    assert c.flush(timeout=20)  # done: delivered or counted
    c.shutdown()
    assert c.stats()["lost"] == {"direct_unreachable": 5}
    assert c.stats()["written"] == 0  # what the sink lost is counted there only: recorded = written + lost
    lines = [orjson.loads(line) for f in (tmp_path / "spool" / "rejected").glob("*.jsonl") for line in f.open("rb")]
    assert [(e["reason"], e["record"]["account"]) for e in lines] == [("direct_unreachable", "gamma")] * 5
    assert TOKEN not in "".join(str(e) for e in lines)


def test_the_direct_sink_is_configured_in_code_as_well(ledger: LedgerServer, tmp_path: Path) -> None:
    c = meterkit.Client(
        spool_dir=tmp_path / "spool",
        sink="direct",
        direct_url=f"{ledger.url}/organizations/{ORG}/measurements",
        direct_token_file=str(token_file(tmp_path, TOKEN)),
    )
    c.record("api_calls", account="delta", measure={"calls": 7})
    assert c.flush(timeout=20)
    prefix = c._uids.prefix
    c.shutdown()
    assert [u for u in stored_uids(ledger) if u.startswith(prefix)] and c.stats()["written"] == 1
    with pytest.raises(meterkit.ConfigError, match="direct_url"):
        meterkit.Client(spool_dir=tmp_path / "other", sink="direct")


CATALOG = """
meters:
  - code: downloads
    name: Downloads
    data_fields:
      - {code: bytes, name: Bytes, category: MEASURE}
"""


def test_a_measurement_the_server_names_is_rejected_and_the_rest_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger whose catalog lacks a meter the process (without a catalog) records."""
    (tmp_path / "meters.yaml").write_text(CATALOG)
    strict = start_ledger(tmp_path, extra=("--catalog", str(tmp_path / "meters.yaml")))
    try:
        direct_env(strict.url, monkeypatch)
        c = client(tmp_path)
        c.record("downloads", account="delta", measure={"bytes": 1}, uid="named-1")
        c.record("uploads", account="delta", measure={"bytes": 2}, uid="named-2")
        c.record("downloads", account="delta", measure={"bytes": 3}, uid="named-3")
        assert c.flush(timeout=20)
        c.shutdown()
        lost = c.stats()["lost"]
        assert list(lost.values()) == [1] and next(iter(lost)).startswith("rejected:")
        assert sorted(stored_uids(strict)) == ["named-1", "named-3"]
        rejected = [
            orjson.loads(line) for f in (tmp_path / "spool" / "rejected").glob("*.jsonl") for line in f.open("rb")
        ]
        assert [e["record"]["uid"] for e in rejected] == ["named-2"]
    finally:
        strict.proc.kill()


def test_a_process_that_flushes_then_os_exits_loses_nothing(
    ledger: LedgerServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        import meterkit
        meterkit.configure(spool_dir=sys.argv[1])
        for i in range(40):
            meterkit.record("api_calls", account="epsilon", measure={"calls": i}, uid=f"exit-job-{i}")
        ok = meterkit.flush(timeout=20)
        os._exit(0 if ok else 3)
        """
    )
    env = {
        **os.environ,
        "METERKIT_SINK": "direct",
        "METERKIT_DIRECT_URL": f"{proxy.url}/organizations/{ORG}/measurements",
        "METERKIT_DIRECT_TOKEN": TOKEN,
    }
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spool")], env=env, timeout=60, check=False)
    assert done.returncode == 0
    uids = [u for u in stored_uids(ledger) if u.startswith("exit-job-")]
    assert sorted(uids) == sorted(f"exit-job-{i}" for i in range(40))
