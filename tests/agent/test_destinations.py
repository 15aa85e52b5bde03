"""Several destinations, each with its own progress, against real processes: an agent
sends one spool to two ledgers, one of them behind a proxy that answers 503 for a while.
The healthy one gets everything while the other is down; the spool keeps its segments
until both have them; the failed one catches up; both end exact, count and sum, and each
destination's journal reconciles with its own backend."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit._spool import segments
from tests.agent.conftest import (
    TOKEN,
    FaultProxy,
    LedgerServer,
    Proc,
    cli_cmd,
    start_agent,
    start_ledger,
    wait_for,
)

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


@dataclass
class Pair:
    """Two real ledgers, ``billing`` and ``record``, with a proxy in front of ``record``
    that forwards everything until it is given a plan; the catalog and the spool the SDK
    writes. A test starts the agent with the options it needs; the fixture stops it."""

    tmp_path: Path
    catalog: Path
    billing: LedgerServer
    record: LedgerServer
    proxy: FaultProxy
    spool: Path
    agent: Proc | None = None

    @property
    def state(self) -> Path:
        return self.tmp_path / "state"

    def start_agent(self, *, through_proxy: bool = True, retention: float = 168, layout: str = "shared") -> Proc:
        """The agent over the spool; ``record`` reached through the proxy unless told not to."""
        assert self.agent is None, "one agent per test"
        record = self.proxy.url if through_proxy else self.record.url
        config = write_config(
            self.tmp_path, self.spool, self.catalog, self.billing.url, record, retention=retention, layout=layout
        )
        self.agent = start_agent(self.tmp_path, config)
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.kill(signal.SIGKILL)

    def client(self, **options: Any) -> meterkit.Client:
        return meterkit.Client(self.catalog, self.spool, flush_interval_millis=20, **options)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(CATALOG)
    with ExitStack() as stack:  # undone in reverse: the agent, the proxy, then the ledgers
        billing = start_ledger(tmp_path / "billing")
        stack.callback(billing.proc.kill)
        record = start_ledger(tmp_path / "record")
        stack.callback(record.proc.kill)
        proxy = FaultProxy(record.url)
        stack.callback(proxy.close)
        p = Pair(tmp_path, catalog, billing, record, proxy, tmp_path / "spool")
        stack.callback(p.stop_agent)
        yield p


@pytest.mark.parametrize("layout", sorted(PIPELINES))
def test_a_destination_that_is_down_delays_only_itself_and_catches_up_exactly(pair: Pair, layout: str) -> None:
    billing, record, proxy, spool = pair.billing, pair.record, pair.proxy, pair.spool
    proxy.plan = list(OUTAGE)
    agent = pair.start_agent(layout=layout)
    client = pair.client(max_segment_bytes=32_000)
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
    for ledger, extra in ((billing, ()), (record, ("--destination", "m3ter/record"))):
        report = reconcile(pair.state, ledger.url, *extra)
        assert report["reconciled"] is True, report
        [row] = report["rows"]
        assert (row["delivered"], row["backend"]) == (len(values), len(values)), row
    assert agent.kill(signal.SIGTERM) == 0


def test_a_destination_down_past_the_retention_gives_the_segments_up_and_says_so(pair: Pair) -> None:
    """Retention 0.001 h (3.6 s): the segments the healthy destination has are given up by
    the one that is down, journaled as expired, and reconciliation explains them."""
    billing, record, spool = pair.billing, pair.record, pair.spool
    pair.proxy.plan = list(OUTAGE)
    agent = pair.start_agent(retention=0.001)
    client = pair.client(max_segment_bytes=32_000)
    for n in range(1, 501):
        client.record("jobs", account="acme", measure={"n": n})
    client.shutdown(10)
    wait_for(lambda: in_ledger(billing) == (500, sum(range(1, 501))), timeout=60, what="the healthy destination")
    wait_for(lambda: not segments(spool), timeout=60, what="the segments given up by the lagging destination")
    assert in_ledger(record) == (0, 0)

    pair.proxy.plan.clear()  # back: what is recorded from now on reaches it
    client = pair.client()
    for n in range(1000, 1010):
        client.record("jobs", account="acme", measure={"n": n})
    client.shutdown(10)
    wait_for(lambda: in_ledger(record) == (10, sum(range(1000, 1010))), timeout=60, what="new measurements")
    both = (510, sum(range(1, 501)) + sum(range(1000, 1010)))
    wait_for(lambda: in_ledger(billing) == both, timeout=60, what="the healthy destination, again")

    report = reconcile(pair.state, record.url, "--destination", "m3ter/record")
    assert report["reconciled"] is True, report
    [row] = report["rows"]
    assert (row["recorded"], row["expired"], row["delivered"], row["backend"]) == (510, 500, 10, 10), row
    status = subprocess.run(
        cli_cmd("agent", "status", "--state-dir", str(pair.state), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lost = {d["destination"]: d["lost"] for d in json.loads(status.stdout)["destinations"]}
    assert lost == {"m3ter/billing": 0, "m3ter/record": 500}, status.stdout[-1500:]
    assert agent.kill(signal.SIGTERM) == 0


def test_destinations_that_keep_up_share_one_read_of_the_spool(pair: Pair) -> None:
    """Two healthy destinations of one pipeline: the spool is read and prepared once (the
    pipeline's feed received everything; neither destination read it on its own)."""
    billing, record = pair.billing, pair.record
    agent = pair.start_agent(through_proxy=False)
    client = pair.client(max_segment_bytes=32_000)
    for n in range(1, 801):
        client.record("jobs", account="acme", measure={"n": n})
    client.shutdown(10)
    expected = (800, sum(range(1, 801)))
    wait_for(lambda: in_ledger(billing) == expected and in_ledger(record) == expected, what="both")
    assert agent.kill(signal.SIGTERM) == 0
    status = json.loads((pair.state / "status.json").read_bytes())
    received = {
        tuple(sorted(p["attributes"].items())): p["value"] for p in status["metrics"]["meterkit.agent.received"]
    }
    assert received.get((("feed", "usage"),)) == 800, received
    assert not any(v for k, v in received.items() if dict(k).get("destination")), received


# -- a minute of 503s from one destination, with a producer recording throughout ----------

OUTAGE_SECONDS = 60.0  # wall time, as the issue asks
CHECK_EVERY = 10.0  # seconds between looks at the healthy destination during the outage
ROUND, ROUND_SECONDS, MAX_ROUNDS = 20, 0.25, 320  # at most 6,400 measurements


class Producer(threading.Thread):
    """Records ``ROUND`` measurements every ``ROUND_SECONDS`` (n = 1, 2, 3, ...) until told
    to stop, and waits after each round until the spool has them: ``flushed`` (count,
    sum) is what the agent can read by now."""

    def __init__(self, client: meterkit.Client) -> None:
        super().__init__(name="producer", daemon=True)
        self.client = client
        self.stopping = threading.Event()
        self.flushed = (0, 0)  # replaced whole, so a reader never sees half an update
        self.error: BaseException | None = None
        self.closed = False

    def run(self) -> None:
        n = total = 0
        try:
            for _ in range(MAX_ROUNDS):
                for _ in range(ROUND):
                    n += 1
                    total += n
                    self.client.record("jobs", account="acme", measure={"n": n})
                if not self.client.flush(10):
                    raise AssertionError(f"the spool did not take measurements up to n={n} within 10 s")
                self.flushed = (n, total)
                if self.stopping.wait(ROUND_SECONDS):
                    break
        except BaseException as exc:  # handed to the test by finish()
            self.error = exc
        finally:
            self.closed = self.client.shutdown(10)

    def finish(self) -> tuple[int, int]:
        """Stop, and return (count, sum) of everything recorded."""
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), "the producer did not stop"
        if self.error is not None:
            raise self.error
        assert self.closed, "the client did not shut down cleanly"
        return self.flushed


def holds_at_least(ledger: LedgerServer, count: int) -> bool:
    return in_ledger(ledger)[0] >= count


def test_a_minute_of_503s_from_one_destination_leaves_the_other_current_and_both_exact(pair: Pair) -> None:
    """The issue's test, in the documented shared-pipeline layout. For a minute of wall
    time the record ledger answers 503 to everything while a producer records steadily;
    every ~10 s, billing must hold at least what had reached the spool at that moment
    (within 15 s, generous: no speed is asserted; ``make bench``, phase b_503, measures
    the latency) while record still holds nothing and keeps being retried. Then the
    outage ends: record catches up, both hold exactly the producer's count and sum, and
    each destination reconciles with delivered == backend == recorded count, which a
    measurement committed twice would break. Wall time about 65-80 s (66-67 s measured on
    two shared cores), most of it the minute of outage."""
    billing, record, proxy = pair.billing, pair.record, pair.proxy
    proxy.plan = list(OUTAGE)
    agent = pair.start_agent(layout="shared")
    producer = Producer(pair.client(max_segment_bytes=32_000))
    producer.start()
    try:
        started = time.monotonic()
        checks, tried = 0, 0
        while (left := started + OUTAGE_SECONDS - time.monotonic()) > 0:
            time.sleep(min(CHECK_EVERY, left))  # the outage is measured in time; there is no condition to wait on
            assert producer.is_alive(), f"the producer stopped early: {producer.error!r}"
            count = producer.flushed[0]
            wait_for(partial(holds_at_least, billing, count), timeout=15, what=f"billing to hold {count} amid 503s")
            assert in_ledger(record) == (0, 0)
            assert len(proxy.seen) > tried, "the failing destination stopped trying"
            tried = len(proxy.seen)
            checks += 1
        assert checks >= 5, checks
    finally:
        proxy.plan.clear()  # the outage ends
        expected = producer.finish()
    assert expected[0] >= 1000, expected  # a minute of steady recording, not a trickle

    wait_for(lambda: in_ledger(billing) == expected, timeout=60, what="billing to hold everything")
    wait_for(lambda: in_ledger(record) == expected, timeout=60, what="the failed destination to catch up")
    wait_for(lambda: not segments(pair.spool), timeout=30, what="segments retired once both have them")
    for ledger, extra in ((billing, ()), (record, ("--destination", "m3ter/record"))):
        report = reconcile(pair.state, ledger.url, *extra)
        assert report["reconciled"] is True, report
        [row] = report["rows"]
        assert (row["delivered"], row["backend"]) == (expected[0], expected[0]), row
    assert agent.kill(signal.SIGTERM) == 0
