"""The balance keeper: ``as_of`` never passes an undelivered measurement, the snapshot is
written whole and read by the SDK's cap decisions, a failed refresh keeps the old file,
``agent status`` tells how fresh it is, and a hard cap reached through a real ledger stops
a second host."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

import meterkit
from meterkit._caps import parse_snapshot
from meterkit._plans import period_bounds
from meterkit._spool import KIND_CONTROL, SegmentWriter, encode_frame, encode_header
from meterkit_agent.balances import STATUS_NAME, BalancesConfig, BalancesKeeper, SpoolWatermark
from meterkit_agent.config import ConfigFileError, parse_config, simple_config
from meterkit_agent.instants import iso

from .conftest import TOKEN, Proc, cli_cmd, start_ledger, wait_for

SECRET = "s3cret-balances-token"
PLANS = """\
currency: USD
plans:
  - code: growth
    bill_period: month
    limits:
      - {{meter: api_calls, cap: {cap}, period: month, mode: hard}}
    thresholds: [80, 100]
accounts:
  acme: [{{plan: growth, from: "2026-01-01T00:00:00Z"}}]
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def next_ms() -> None:
    """Wait for the millisecond clock to tick, so consecutive events have distinct times."""
    start = now_ms()
    while now_ms() == start:
        time.sleep(0.0002)


# -- as_of ---------------------------------------------------------------------------------


def test_as_of_is_never_after_an_undelivered_measurement(tmp_path: Path) -> None:
    """Random writes, acknowledgements and rotations across two spools: after every sample,
    ``as_of`` is at or before the recording time of every frame not yet acknowledged; once
    everything is acknowledged it catches up with the sample's time."""
    rng = random.Random(13)
    spools = [tmp_path / "a", tmp_path / "b"]
    writers = [SegmentWriter(d, f"w{i}", max_segment_bytes=400) for i, d in enumerate(spools)]
    acked: dict[str, int] = {}
    frames: list[tuple[str, int, int]] = []  # (segment key, frame end, recorded ms)
    keeper = BalancesKeeper(
        BalancesConfig(ledger_url="http://127.0.0.1:9", org_id="o", flush_margin_millis=0),
        [tmp_path / "balances.json"],
        SpoolWatermark(lambda: spools, lambda key: acked.get(key, 0)),
        tmp_path,
    )
    asked: list[int] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.45:
            i = rng.randrange(2)
            recorded = now_ms()
            writers[i].write(encode_frame(KIND_CONTROL, b'{"n":1}'), 1)
            segment = writers[i].path
            assert segment is not None
            frames.append((f"{spools[i]}/{segment.name}", writers[i]._size, recorded))
        elif op < 0.75 and frames:
            # The pipeline acknowledges a segment's frames in order, and mostly what it read first.
            done = frames[: rng.randrange(len(frames)) + 1] if rng.random() < 0.7 else [rng.choice(frames)]
            for key, end, _ in done:
                acked[key] = max(acked.get(key, 0), end)
            retire(spools, writers, frames, acked)
        else:
            keeper.watermark.sample()
            as_of = keeper.next_as_of()
            undelivered = [ms for key, end, ms in frames if acked.get(key, 0) < end]
            if as_of is not None:
                assert not undelivered or as_of <= min(undelivered)
                assert not asked or as_of >= asked[-1]  # it never goes back
                asked.append(as_of)
        if rng.random() < 0.3:
            next_ms()
    for key, end, _ in frames:
        acked[key] = max(acked.get(key, 0), end)
    retire(spools, writers, frames, acked)
    before = now_ms()
    keeper.watermark.sample()
    caught_up = keeper.next_as_of()
    assert caught_up is not None and caught_up >= before
    assert len(asked) > 30 and len(set(asked)) > 10  # it moved along as frames were acknowledged


def retire(
    spools: list[Path], writers: list[SegmentWriter], frames: list[tuple[str, int, int]], acked: dict[str, int]
) -> None:
    """What the agent's retirer does: delete a sealed segment once its frames are acknowledged."""
    current = {str(w.path) for w in writers}
    for spool in spools:
        for path in spool.glob("*.mks"):
            key = f"{spool}/{path.name}"
            ends = [end for k, end, _ in frames if k == key]
            if str(path) not in current and acked.get(key, 0) >= max(ends, default=0):
                path.unlink()


def test_a_backlog_found_at_start_bounds_as_of_by_its_segments_creation(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = SegmentWriter(spool, "w")
    writer.write(encode_frame(KIND_CONTROL, b"{}"), 1)
    assert writer.path is not None
    created = int(writer.path.name.split("-")[0])
    # A fresh segment holding only its header is no measurement: it holds nothing back.
    (spool / f"{now_ms():013d}-1-fresh-00001.mks").write_bytes(encode_header({"format": 2}))
    watermark = SpoolWatermark(lambda: [spool], lambda key: 0)
    assert watermark.sample() == created
    acked = {f"{spool}/{writer.path.name}": writer._size}
    drained = SpoolWatermark(lambda: [spool], lambda key: acked.get(key, 0))
    before = now_ms()
    mark = drained.sample()
    assert mark is not None and mark >= before


# -- against a small ledger of our own ---------------------------------------------------------


class FakeLedger:
    """Answers ``GET /organizations/{org}/balances`` with the ledger's shape, or fails on command."""

    def __init__(self, balances: int = 1, value: str = "3") -> None:
        self.mode = "ok"  # ok | 503 | later
        self.requests: list[dict[str, Any]] = []
        self.balances, self.value = balances, value
        ledger = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                as_of = parse_qs(url.query)["as_of"][0]
                ledger.requests.append({"path": url.path, "as_of": as_of, "auth": self.headers.get("Authorization")})
                if ledger.mode == "503":
                    body, status = b'{"message": "down for maintenance"}', 503
                else:
                    answered = as_of if ledger.mode == "ok" else "2999-01-01T00:00:00Z"
                    body, status = orjson.dumps(ledger.answer(answered)), 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, as_of: str) -> dict[str, Any]:
        start = iso(period_bounds(now_ms(), "month")[0])
        rows = [
            {
                "plan": "growth",
                "meter": "api_calls",
                "field": None,
                "account": "acme" if n == 0 else f"account-{n}",
                "period_start": start,
                "value": self.value,
            }
            for n in range(self.balances)
        ]
        return {"as_of": as_of, "balances": rows, "notified": []}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_ledger() -> Iterator[FakeLedger]:
    server = FakeLedger()
    yield server
    server.close()


def make_keeper(tmp_path: Path, url: str, interval_millis: int = 30_000) -> BalancesKeeper:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700, exist_ok=True)
    cfg = BalancesConfig(ledger_url=url, org_id="acme org", token=SECRET, interval_millis=interval_millis)
    return BalancesKeeper(cfg, [spool / "balances.json"], SpoolWatermark(lambda: [spool], lambda key: 0), tmp_path)


def test_a_refresh_writes_the_snapshot_the_sdk_decides_caps_from(tmp_path: Path, fake_ledger: FakeLedger) -> None:
    keeper = make_keeper(tmp_path, fake_ledger.url)
    keeper.watermark.sample()
    before = now_ms()
    assert keeper.refresh()
    path = keeper.paths[0]
    assert path.stat().st_mode & 0o777 == 0o600
    doc = orjson.loads(path.read_bytes())
    request = fake_ledger.requests[-1]
    assert request["path"] == "/organizations/acme%20org/balances" and request["auth"] == f"Bearer {SECRET}"
    assert doc["as_of"] == request["as_of"]
    snapshot = parse_snapshot(path.read_bytes())
    assert snapshot.as_of_ms <= before - 2000  # the flush margin: what the SDKs still hold in memory
    assert snapshot.fetched_at_ms >= before
    assert make_keeper(tmp_path, fake_ledger.url).as_of_ms == snapshot.as_of_ms  # a restart never goes back
    (tmp_path / "plans.yaml").write_text(PLANS.format(cap=5))
    meterkit.configure(spool_dir=tmp_path / "app-spool", plans=tmp_path / "plans.yaml", balances_path=path)
    allowed = [meterkit.allow("api_calls", account="acme") for _ in range(3)]
    assert [d.allowed for d in allowed] == [True, True, False]  # 3 in the snapshot + 2 here = the cap
    assert allowed[-1].reason == "hard cap reached" and not allowed[-1].fallback


def test_a_failed_refresh_keeps_the_old_file_and_is_logged_once_per_streak(
    tmp_path: Path, fake_ledger: FakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = make_keeper(tmp_path, fake_ledger.url)
    keeper.watermark.sample()
    assert keeper.refresh()
    kept = keeper.paths[0].read_bytes()
    caplog.set_level(logging.INFO, logger="meterkit.agent")
    fake_ledger.mode = "503"
    assert not keeper.refresh() and not keeper.refresh()
    fake_ledger.mode = "later"  # an answer covering more than this host may have delivered
    assert not keeper.refresh()
    assert keeper.paths[0].read_bytes() == kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0] and "down for maintenance" in warnings[0]
    status = orjson.loads((tmp_path / STATUS_NAME).read_bytes())
    assert status["failures_in_a_row"] == 3 and "later than asked" in status["last_error"]
    fake_ledger.close()
    assert not keeper.refresh()
    assert "cannot reach the ledger" in orjson.loads((tmp_path / STATUS_NAME).read_bytes())["last_error"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert SECRET not in caplog.text and SECRET not in (tmp_path / STATUS_NAME).read_text()
    assert (tmp_path / STATUS_NAME).stat().st_mode & 0o777 == 0o600
    assert keeper.paths[0].read_bytes() == kept


def test_a_reader_never_sees_a_partial_snapshot(tmp_path: Path) -> None:
    """The keeper's own thread rewrites a 1 MB snapshot every 50 ms while a reader reads it
    as the SDK does: every read parses, and no temporary file is left behind."""
    server = FakeLedger(balances=6_000)
    keeper = make_keeper(tmp_path, server.url, interval_millis=50)
    path = keeper.paths[0]
    reads, problems = [0], []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                parse_snapshot(path.read_bytes())
                reads[0] += 1
            except FileNotFoundError:
                continue
            except ValueError as exc:
                problems.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    keeper.start()
    try:
        wait_for(lambda: len(server.requests) >= 12, what="a dozen refreshes")
    finally:
        keeper.shutdown()
        stop.set()
        reader.join()
        server.close()
    assert problems == [] and reads[0] > 0
    assert len(parse_snapshot(path.read_bytes()).balances) == 6_000
    assert [p.name for p in path.parent.iterdir()] == ["balances.json"]


# -- configuration and status ---------------------------------------------------------------


def config_doc(**balances: Any) -> dict[str, Any]:
    return {
        "receivers": {"spool": {"directory": "/tmp/x"}},
        "exporters": {"ledger": {"org_id": "o"}},
        "extensions": {"balances": {"ledger_url": "http://127.0.0.1:8765/", "org_id": "o", **balances}},
        "service": {"extensions": ["balances"], "pipelines": {"p": {"receivers": ["spool"], "exporters": ["ledger"]}}},
    }


def test_the_keeper_is_an_extension_in_the_collectors_shape() -> None:
    cfg = parse_config(config_doc(token=SECRET))
    keeper = cfg.balances
    assert keeper is not None and keeper.ledger_url == "http://127.0.0.1:8765" and keeper.interval_millis == 30_000
    assert SECRET not in repr(cfg)
    doc = config_doc(interval_millis=0, ledger_url="http://u:p@h")
    doc["service"]["extensions"].append("health_check")
    doc["receivers"] = {"http": {}}
    doc["service"]["pipelines"]["p"]["receivers"] = ["http"]
    with pytest.raises(ConfigFileError) as raised:
        parse_config(doc)
    text = "\n".join(raised.value.problems)
    assert "extensions.balances.interval_millis" in text and "must not hold credentials" in text
    assert "'health_check' is not defined under extensions" in text
    simple = simple_config(spool_dir=Path("/tmp/x"), to="http://127.0.0.1:8765", org="o", token=SECRET, balances=True)
    assert simple.balances is not None and simple.balances.org_id == "o"
    with pytest.raises(ConfigFileError):
        simple_config(balances=True)  # no ledger to ask
    no_keeper = config_doc()
    del no_keeper["service"]["extensions"]
    assert parse_config(no_keeper).balances is None


def status(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_cmd("agent", "status", "--state-dir", str(state_dir)), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_tells_how_fresh_the_snapshot_is_from_the_file(tmp_path: Path, fake_ledger: FakeLedger) -> None:
    keeper = make_keeper(tmp_path, fake_ledger.url)
    keeper.watermark.sample()
    assert keeper.refresh()
    fake_ledger.mode = "503"
    assert not keeper.refresh()
    path = keeper.paths[0]
    shown = status(tmp_path)
    assert shown.returncode == 1, shown.stderr  # no agent runs here: status says so, and exits 1
    assert "NOT RUNNING" in shown.stdout
    doc = orjson.loads(path.read_bytes())
    assert f"{path}: as_of {doc['as_of']}, fetched_at {doc['fetched_at']}" in shown.stdout
    assert "1 balance(s)" in shown.stdout and "STALE" not in shown.stdout
    assert "HTTP 503" in shown.stdout and "1 failure(s) in a row" in shown.stdout
    # A stopped agent's snapshot ages: only the file's fetched_at counts.
    doc["fetched_at"] = iso(now_ms() - 301_000)
    path.write_bytes(orjson.dumps(doc))
    shown = orjson.loads(status(tmp_path, "--json").stdout)["balances"]
    assert shown["snapshots"][0]["stale"] and shown["snapshots"][0]["age_seconds"] >= 301


# -- end to end: a real ledger, two hosts ------------------------------------------------------

#: Host A: records ``n`` calls and flushes them into its spool.
HOST_A = """
import sys, meterkit
meterkit.configure(spool_dir=sys.argv[1])
for _ in range(int(sys.argv[2])):
    meterkit.record("api_calls", account="acme")
meterkit.shutdown()
"""


def agent_config(tmp_path: Path, name: str, ledger_url: str) -> tuple[Path, Path]:
    spool, state = tmp_path / name / "spool", tmp_path / name / "state"
    config = tmp_path / name / "agent.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"""
receivers:
  spool: {{directory: {spool}, poll_interval_millis: 50}}
processors:
  batch: {{max_measurements: 500, timeout_millis: 100}}
exporters:
  m3ter: {{base_url: "{ledger_url}", org_id: acme-org, token: "${{LEDGER_TOKEN}}"}}
extensions:
  balances: {{ledger_url: "{ledger_url}", org_id: acme-org, token: "${{LEDGER_TOKEN}}",
              interval_millis: 500, flush_margin_millis: 500}}
service:
  state_dir: {state}
  extensions: [balances]
  pipelines:
    usage: {{receivers: [spool], processors: [batch], exporters: [m3ter]}}
""")
    return config, spool


def test_a_hard_cap_reached_through_the_ledger_stops_a_second_host(tmp_path: Path) -> None:
    cap = 1000
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS.format(cap=cap))
    ledger = start_ledger(tmp_path, extra=("--plans", str(plans)))
    agents: list[Proc] = []
    try:
        for name in ("a", "b"):
            config, _ = agent_config(tmp_path, name, ledger.url)
            agents.append(
                Proc(
                    cli_cmd("agent", "run", "--config", str(config)),
                    tmp_path / name / "agent.log",
                    {"LEDGER_TOKEN": TOKEN},
                ).start()
            )
        spool_a, spool_b = tmp_path / "a" / "spool", tmp_path / "b" / "spool"
        # Host B (this process) decides from its own agent's snapshot.
        meterkit.configure(spool_dir=spool_b, plans=plans, balances_path=spool_b / "balances.json")
        wait_for(lambda: (spool_b / "balances.json").exists(), what="host B's first snapshot")
        wait_for(lambda: not meterkit.allow("api_calls", account="acme").fallback, what="host B reading it")
        first = meterkit.allow("api_calls", account="acme")
        assert first.allowed and first.reason == "allowed"

        subprocess.run([sys.executable, "-c", HOST_A, str(spool_a), str(cap)], check=True, timeout=60)
        decisions: list[meterkit.Decision] = []

        def refused() -> bool:
            decisions.append(meterkit.allow("api_calls", account="acme"))
            return not decisions[-1].allowed

        wait_for(refused, timeout=20, what="host B refusing after host A reached the cap")
        last = decisions[-1]
        assert last.reason == "hard cap reached" and not last.fallback and last.remaining == 0
        # Host B's own decisions were far below the cap: host A's usage, through the ledger, stopped it.
        assert sum(d.allowed for d in decisions) + 1 < cap
        snapshot = parse_snapshot((spool_b / "balances.json").read_bytes())
        assert max(snapshot.balances.values()) == cap
        shown = status(tmp_path / "b" / "state")
        assert f"{spool_b / 'balances.json'}: as_of" in shown.stdout and "1 balance(s)" in shown.stdout
    finally:
        for proc in agents:
            proc.kill(signal.SIGTERM)
        ledger.proc.kill(signal.SIGTERM)
