"""Several destinations, each with its own progress, against real processes: an agent
sends one spool to two ledgers, one of them behind a proxy that answers 503 for a while.
The healthy one gets everything while the other is down; the spool keeps its segments
until both have them; the failed one catches up; both end exact, count and sum, and each
destination's journal reconciles with its own backend."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit._spool import segments
from tests.agent.conftest import TOKEN, FaultProxy, LedgerServer, cli_cmd, start_agent, start_ledger, wait_for

OUTAGE = [503] * 100_000  # every request answered 503 until the plan is cleared

CATALOG = """
meters:
  - code: jobs
    name: Jobs
    data_fields:
      - {code: n, name: Units, category: MEASURE}
"""


def in_ledger(ledger: LedgerServer) -> tuple[int, int]:
    """(count, exact sum of n) the ledger stores."""

    def value(aggregation: str, **extra: str) -> int:
        params = {"meter": "jobs", "account": "acme", "aggregation": aggregation, **extra}
        data = ledger.get("/organizations/test-org/usage", **params)["data"]
        return int(data[0]["value"]) if data else 0

    return value("COUNT"), value("SUM", field="n")


#: Two destinations in one pipeline (they share one read of the spool while both keep up),
#: or each in a pipeline of its own (each reads the spool itself).
PIPELINES = {
    "shared": "usage: {receivers: [spool], processors: [validate, batch], exporters: [m3ter/billing, m3ter/record]}",
    "apart": "billing: {receivers: [spool], processors: [validate, batch], exporters: [m3ter/billing]}\n"
    "    record: {receivers: [spool], processors: [validate, batch], exporters: [m3ter/record]}",
}


def write_config(
    tmp_path: Path,
    spool: Path,
    catalog: Path,
    billing: str,
    record: str,
    retention: float = 168,
    layout: str = "shared",
) -> Path:
    """One spool, two backends: ``m3ter/billing`` and ``m3ter/record``."""
    retry = "retry: {initial_interval_millis: 50, max_interval_millis: 300, request_timeout_millis: 2000}"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"""
receivers:
  spool: {{directory: {spool}, poll_interval_millis: 50}}
processors:
  validate: {{catalog: {catalog}}}
  batch: {{max_measurements: 200, timeout_millis: 50}}
exporters:
  m3ter/billing: {{base_url: {billing}, org_id: test-org, token: "${{LEDGER_TOKEN}}", {retry}}}
  m3ter/record: {{base_url: {record}, org_id: test-org, token: "${{LEDGER_TOKEN}}", {retry}}}
service:
  state_dir: {tmp_path / "state"}
  drain_timeout_millis: 5000
  spool_retention_hours: {retention}
  pipelines:
    {PIPELINES[layout]}
"""
    )
    return cfg


def reconcile(state: Path, url: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        cli_cmd(
            "reconcile",
            *extra,
            "--state-dir",
            str(state),
            "--url",
            url,
            "--org",
            "test-org",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--json",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env={"METERKIT_LEDGER_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.mark.parametrize("layout", sorted(PIPELINES))
def test_a_destination_that_is_down_delays_only_itself_and_catches_up_exactly(tmp_path: Path, layout: str) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(CATALOG)
    billing = start_ledger(tmp_path / "billing")
    record = start_ledger(tmp_path / "record")
    proxy = FaultProxy(record.url)
    proxy.plan = list(OUTAGE)
    spool = tmp_path / "spool"
    agent = start_agent(tmp_path, write_config(tmp_path, spool, catalog, billing.url, proxy.url, layout=layout))
    try:
        client = meterkit.Client(catalog, spool, flush_interval_millis=20, max_segment_bytes=32_000)
        values = list(range(1, 1201))
        for n in values:
            client.record("jobs", account="acme", measure={"n": n})
        client.shutdown(10)
        expected = (len(values), sum(values))

        # The healthy destination gets everything while the other answers 503.
        wait_for(lambda: in_ledger(billing) == expected, timeout=60, what="the healthy destination")
        assert in_ledger(record) == (0, 0)
        assert len(proxy.seen) > 0  # the failing one kept trying
        # The spool keeps what the lagging destination has not acknowledged.
        assert segments(spool)

        proxy.plan.clear()  # the outage ends
        wait_for(lambda: in_ledger(record) == expected, timeout=60, what="the failed destination to catch up")
        assert in_ledger(billing) == expected
        wait_for(lambda: not segments(spool), timeout=30, what="segments retired once both have them")

        # Each destination keeps its own journal, and each reconciles with its own backend.
        state = tmp_path / "state"
        for ledger, extra in ((billing, ()), (record, ("--destination", "m3ter/record"))):
            report = reconcile(state, ledger.url, *extra)
            assert report["reconciled"] is True, report
            [row] = report["rows"]
            assert (row["delivered"], row["backend"]) == (len(values), len(values)), row
        assert agent.kill(signal.SIGTERM) == 0
    finally:
        agent.kill(signal.SIGKILL)
        proxy.close()
        billing.proc.kill()
        record.proc.kill()


def test_a_destination_down_past_the_retention_gives_the_segments_up_and_says_so(tmp_path: Path) -> None:
    """Retention 0.001 h (3.6 s): the segments the healthy destination has are given up by
    the one that is down, journaled as expired, and reconciliation explains them."""
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(CATALOG)
    billing = start_ledger(tmp_path / "billing")
    record = start_ledger(tmp_path / "record")
    proxy = FaultProxy(record.url)
    proxy.plan = list(OUTAGE)
    spool = tmp_path / "spool"
    agent = start_agent(tmp_path, write_config(tmp_path, spool, catalog, billing.url, proxy.url, retention=0.001))
    try:
        client = meterkit.Client(catalog, spool, flush_interval_millis=20, max_segment_bytes=32_000)
        for n in range(1, 501):
            client.record("jobs", account="acme", measure={"n": n})
        client.shutdown(10)
        wait_for(lambda: in_ledger(billing) == (500, sum(range(1, 501))), timeout=60, what="the healthy destination")
        wait_for(lambda: not segments(spool), timeout=60, what="the segments given up by the lagging destination")
        assert in_ledger(record) == (0, 0)

        proxy.plan.clear()  # back: what is recorded from now on reaches it
        client = meterkit.Client(catalog, spool, flush_interval_millis=20)
        for n in range(1000, 1010):
            client.record("jobs", account="acme", measure={"n": n})
        client.shutdown(10)
        wait_for(lambda: in_ledger(record) == (10, sum(range(1000, 1010))), timeout=60, what="new measurements")
        both = (510, sum(range(1, 501)) + sum(range(1000, 1010)))
        wait_for(lambda: in_ledger(billing) == both, timeout=60, what="the healthy destination, again")

        report = reconcile(tmp_path / "state", record.url, "--destination", "m3ter/record")
        assert report["reconciled"] is True, report
        [row] = report["rows"]
        assert (row["recorded"], row["expired"], row["delivered"], row["backend"]) == (510, 500, 10, 10), row
        status = subprocess.run(
            cli_cmd("agent", "status", "--state-dir", str(tmp_path / "state"), "--json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lost = {d["destination"]: d["lost"] for d in json.loads(status.stdout)["destinations"]}
        assert lost == {"m3ter/billing": 0, "m3ter/record": 500}, status.stdout[-1500:]
        assert agent.kill(signal.SIGTERM) == 0
    finally:
        agent.kill(signal.SIGKILL)
        proxy.close()
        billing.proc.kill()
        record.proc.kill()


def test_destinations_that_keep_up_share_one_read_of_the_spool(tmp_path: Path) -> None:
    """Two healthy destinations of one pipeline: the spool is read and prepared once (the
    pipeline's feed received everything; neither destination read it on its own)."""
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(CATALOG)
    billing = start_ledger(tmp_path / "billing")
    record = start_ledger(tmp_path / "record")
    spool = tmp_path / "spool"
    agent = start_agent(tmp_path, write_config(tmp_path, spool, catalog, billing.url, record.url))
    try:
        client = meterkit.Client(catalog, spool, flush_interval_millis=20, max_segment_bytes=32_000)
        for n in range(1, 801):
            client.record("jobs", account="acme", measure={"n": n})
        client.shutdown(10)
        expected = (800, sum(range(1, 801)))
        wait_for(lambda: in_ledger(billing) == expected and in_ledger(record) == expected, what="both")
        assert agent.kill(signal.SIGTERM) == 0
        status = json.loads((tmp_path / "state" / "status.json").read_bytes())
        received = {
            tuple(sorted(p["attributes"].items())): p["value"] for p in status["metrics"]["meterkit.agent.received"]
        }
        assert received.get((("feed", "usage"),)) == 800, received
        assert not any(v for k, v in received.items() if dict(k).get("destination")), received
    finally:
        agent.kill(signal.SIGKILL)
        billing.proc.kill()
        record.proc.kill()
