"""Thresholds through a real ledger process (``ledger serve --plans --signals``) to a real
webhook receiver that fails first (two 500s, then down) and succeeds later: each threshold
is delivered once per period, signed, with the same id and body on every attempt; listed
by ``GET .../notifications`` and ``meterkit notifications list``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.agent.conftest import TOKEN, cli_cmd, start_ledger, wait_for
from tests.agent.ledger.test_balances import PLANS
from tests.agent.signals.receiver import Receiver

SECRET = "whsec-ledger-test"
SECRET_ENV = "METERKIT_TEST_LEDGER_WEBHOOK_SECRET"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def signals_yaml(url: str) -> str:
    return f"""
webhooks:
  endpoints:
    - {{name: crm, url: "{url}", secret_env: {SECRET_ENV}, timeout_millis: 2000}}
  retry: {{initial_interval_millis: 100, max_interval_millis: 400, jitter_millis: 0}}
  poll_interval_millis: 50
  lease_millis: 5000
trends: {{bucket: hour, window: 3, factor: 3}}
sweep_interval_millis: 600000
"""


@pytest.fixture
def secret_env() -> Iterator[None]:
    os.environ[SECRET_ENV] = SECRET
    yield
    del os.environ[SECRET_ENV]


def calls(n: int, day: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "uid": f"c{day}-{start + i}",
            "meter": "api_calls",
            "account": "acme",
            "ts": f"2026-03-{day:02d}T10:{i:02d}:00Z",
        }
        for i in range(n)
    ]


def test_thresholds_reach_a_webhook_that_fails_first(tmp_path: Path, secret_env: None) -> None:
    receiver = Receiver(SECRET, fail_first=2)  # 500, 500, then down: connection refused
    (tmp_path / "plans.yaml").write_text(PLANS)
    (tmp_path / "signals.yaml").write_text(signals_yaml(receiver.url))
    extra = ("--plans", str(tmp_path / "plans.yaml"), "--signals", str(tmp_path / "signals.yaml"))
    server = start_ledger(tmp_path, extra=extra)
    try:
        for batch in (calls(3, 2), calls(5, 3), calls(4, 5)):  # 3, 8 (80 % and a band), 12 (100 %)
            r = requests.post(
                f"{server.url}/organizations/o/measurements", json={"measurements": batch}, headers=AUTH, timeout=60
            )
            assert r.status_code == 200, r.text
        wait_for(receiver.stopped.is_set, what="two failed attempts, then the receiver down")
        balances = server.get("/organizations/o/balances", as_of="2026-03-31")
        assert {(b["meter"], b["value"]) for b in balances["balances"] if b["account"] == "acme"} == {
            ("api_calls", "12"),
            ("downloads", "0"),
        }
        assert sorted(n["threshold"] for n in balances["notified"]) == ["100", "80"]
        receiver.up()
        listed = lambda: server.get("/organizations/o/notifications")["notifications"]  # noqa: E731
        wait_for(
            lambda: all(d["status"] == "delivered" for n in listed() for d in n["deliveries"]),
            what="every notification delivered",
        )
        seen = receiver.snapshot()
        assert all(s.verified for s in seen)
        delivered = [s for s in seen if s.status == 200]
        events = {n["id"]: n for n in listed()}
        assert sorted(s.event_id for s in delivered) == sorted(events)  # each once
        assert {(e["type"], e["threshold"]) for e in events.values()} == {
            ("cap_threshold", "80"),
            ("cap_threshold", "100"),
            ("band_entered", "4"),
        }
        for s in seen:  # every attempt: the same id, the same bytes
            assert json.loads(s.body)["id"] == s.event_id
            assert s.body == next(d.body for d in delivered if d.event_id == s.event_id)
        # more usage in the period reaches nothing new
        r = requests.post(
            f"{server.url}/organizations/o/measurements", json={"measurements": calls(2, 6)}, headers=AUTH, timeout=60
        )
        assert r.status_code == 200 and len(listed()) == 3

        env = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN}
        base = cli_cmd("notifications", "list", "--ledger", server.url, "--org", "o")
        table = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60, check=True).stdout
        assert "cap_threshold" in table and "band_entered" in table and "crm: delivered" in table
        as_json = subprocess.run([*base, "--json"], capture_output=True, text=True, env=env, timeout=60, check=True)
        assert {n["id"] for n in json.loads(as_json.stdout)} == set(events)
        none = subprocess.run(
            [*base, "--account", "globex"], capture_output=True, text=True, env=env, timeout=60, check=True
        )
        assert none.stdout.strip() == "(no notifications)"
    finally:
        server.proc.kill(signal.SIGTERM)
        receiver.down()


def test_a_missing_webhook_secret_stops_the_ledger(tmp_path: Path) -> None:
    (tmp_path / "signals.yaml").write_text(signals_yaml("http://127.0.0.1:1/hook"))
    os.environ.pop(SECRET_ENV, None)
    done = subprocess.run(
        cli_cmd(
            "ledger",
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'l.db'}",
            "--port",
            "1",
            "--signals",
            str(tmp_path / "signals.yaml"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert SECRET_ENV in done.stderr and "unset or empty" in done.stderr
