"""The peer table: meterkit beside OpenTelemetry's ``counter.add``, OpenTelemetry logs through
the OTLP/HTTP exporter, Segment's client and the official m3ter client, in one run, each
delivering for real to 127.0.0.1.

Where each one delivers, and where "delivered" is counted:

- meterkit: the application's spool, then a ``meterkit agent`` process, then the ledger
  (``meterkit ledger serve``) over HTTP; counted from what the ledger stored.
- the m3ter client: straight to the same ledger process, which serves m3ter's ingest API
  (``/organizations/{orgId}/measurements``) and its client-credentials exchange
  (``/oauth/token``); counted from what the ledger stored.
- Segment and OTLP (logs and the counter's metrics): a counting receiver process
  (:mod:`sink`) that decodes every request as a real endpoint would.

Each workload runs in a process of its own (:mod:`peer_clients`), so its total CPU is the
client's alone, background threads included. Two runs per queued peer:

- the cost run: ``n`` events in a tight loop with the client's queue sized to hold them
  (nothing may be dropped), then flush or shutdown; gives hot-path wall time and total
  process CPU per event, and delivered per second (events over the time from the loop's
  start to the last one the receiver stored);
- the burst: :data:`BURST` events as fast as possible at the client's default settings,
  then flush or shutdown; what the receiver did not get is "lost".

The m3ter client is synchronous (the caller waits for every submit; nothing is queued that
could be dropped), so its one run is both. ``run()`` returns the figures; nothing here
asserts a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port, wait_until

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"  # noqa: S105 - a local benchmark's made-up credentials
CLIENT_ID, CLIENT_SECRET = "bench-service-user", "bench-secret"
CLI = [sys.executable, "-m", "meterkit_agent.cli"]
CATALOG = """\
meters:
  - code: api_calls
    name: API calls
    data_fields:
      - {code: calls, name: Calls, category: MEASURE, unit: "{API_calls}"}
"""

#: (key, label, how it is used, sizes); sizes: cost run, burst (None: the cost run is the burst)
Peer = tuple[str, str, str, tuple[int, int | None]]


def peer_list(quick: bool) -> list[Peer]:
    cost, burst = (20_000, 50_000) if quick else (100_000, 200_000)
    return [
        (
            "meterkit",
            "meterkit",
            "record(); flusher thread → spool; an agent process → the ledger over HTTP, on the same cores",
            (cost, burst),
        ),
        (
            "otel_counter",
            "OTel counter.add",
            "counter.add(1, attributes): one sum per attribute set, sent over OTLP/HTTP at shutdown",
            (cost, None),
        ),
        (
            "otel_logs",
            "OTel logs + OTLP exporter",
            "logger.emit; BatchLogRecordProcessor → OTLPLogExporter (OTLP/HTTP, protobuf)",
            (cost, burst),
        ),
        (
            "segment",
            "Segment analytics-python",
            "client.track; its consumer thread posts JSON batches to /v1/batch",
            (cost, burst),
        ),
        (
            "m3ter_batched",
            "m3ter client, batched",
            "the app buffers events and calls usage.submit with 1,000 (ingest's maximum), waiting for each",
            (burst, None),
        ),
        (
            "m3ter_each",
            "m3ter client, per event",
            "usage.submit with one event, waiting for it (synchronous: nothing queued, so no burst)",
            (100 if quick else 1_000, None),
        ),
    ]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Services:
    """The receivers: one ledger process (SQLite) and one counting sink process."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.catalog = work / "meters.yaml"
        self.catalog.write_text(CATALOG)
        self.db = f"sqlite:///{work / 'ledger.db'}"
        port = free_port()
        self.ledger_url = f"http://127.0.0.1:{port}"
        ledger_args = ["--db", self.db, "--port", str(port), "--catalog", str(self.catalog), "--client-id", CLIENT_ID]
        # The secrets in the environment: on the command line every user would see them in `ps`.
        env = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN, "METERKIT_LEDGER_CLIENT_SECRET": CLIENT_SECRET}
        self.ledger = subprocess.Popen(
            [*CLI, "ledger", "serve", *ledger_args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sink = subprocess.Popen(
            [sys.executable, str(HERE / "sink.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert self.sink.stdout is not None
            self.sink_url = f"http://127.0.0.1:{int(self.sink.stdout.readline())}"
            if not wait_until(self._ledger_up, 60):
                raise RuntimeError("the ledger did not start within 60 s")
            from meterkit_agent.ledger import Ledger

            self.store = Ledger(self.db)
        except BaseException:  # never leave a server process behind
            self.close()
            raise

    def _ledger_up(self) -> bool:
        try:
            return bool(_get(f"{self.ledger_url}/health")["status"] == "ok")
        except OSError:
            return False

    def sink_count(self, key: str) -> tuple[int, float]:
        count, last = _get(self.sink_url).get(key, [0, 0.0])
        return int(count), float(last)

    def close(self) -> None:
        if self.sink.stdin is not None:
            self.sink.stdin.close()
        _stop(self.sink)
        _stop(self.ledger)
        if hasattr(self, "store"):
            self.store.close()


@contextmanager
def agent(services: Services, org: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A meterkit agent delivering one spool to the ledger under ``org``."""
    work = services.work / org
    spool, state = work / "spool", work / "agent"
    work.mkdir()
    config = work / "agent.yaml"
    config.write_text(
        f"receivers: {{spool: {{directory: {spool}, poll_interval_millis: 50}}}}\n"
        f"processors: {{validate: {{catalog: {services.catalog}}},"
        " batch: {max_measurements: 1000, timeout_millis: 200}}\n"
        f"exporters: {{m3ter: {{base_url: '{services.ledger_url}', org_id: {org}, token: {TOKEN}}}}}\n"
        f"service: {{state_dir: {state}, pipelines: {{usage: "
        "{receivers: [spool], processors: [validate, batch], exporters: [m3ter]}}}\n"
    )
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen([*CLI, "agent", "run", "--config", str(config)], stdout=log, stderr=log)
    try:
        if not wait_until(lambda: (state / "status.json").exists() or proc.poll() is not None, 60) or proc.poll():
            raise RuntimeError(f"the agent did not start: {(work / 'agent.log').read_text()[-300:]}")
        yield proc, spool
    finally:
        _stop(proc)
        log.close()


def _client_run(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "peer_clients.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['peer']} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _delivery(count: Callable[[], tuple[int, float]], expected: int, stall_s: float) -> tuple[int, float]:
    """Poll a receiver until it holds ``expected`` events or stops growing for ``stall_s``;
    returns the count and when it last grew (epoch seconds)."""
    seen, last = count()
    quiet_since = time.monotonic()
    while seen < expected and time.monotonic() - quiet_since < stall_s:
        time.sleep(0.1)
        now, when = count()
        if now != seen:
            seen, last, quiet_since = now, when, time.monotonic()
    return seen, last


def _figures(client: dict[str, Any], delivered: int, last: float) -> dict[str, Any]:
    n = client["sent"]
    lost = n - delivered
    return client | {
        "hot_wall_us_per_event": client["hot_wall_s"] / n * 1e6,
        "caller_cpu_us_per_event": client["caller_cpu_s"] / n * 1e6,
        "process_cpu_us_per_event": client["process_cpu_s"] / n * 1e6,
        "delivered": delivered,
        "delivered_per_s": delivered / max(last - client["t0"], 1e-9),
        "lost": lost,
        "lost_pct": 100.0 * lost / n,
    }


def _ledger_run(services: Services, spec: dict[str, Any], stall_s: float) -> dict[str, Any]:
    """A run whose events end in the ledger under ``spec['org']``, counted there; the ledger's
    CPU per event is noted too."""
    org = spec["org"]

    def count() -> tuple[int, float]:
        return services.store.count(org), time.time()

    ledger_cpu = cpu_seconds(services.ledger.pid)
    client = _client_run(spec, 1800)
    delivered, last = _delivery(count, client["sent"], stall_s)
    if spec["peer"].startswith("m3ter") and delivered == client["sent"]:
        last = client["t_flushed"]  # synchronous: stored when its last call returned, not when polled
    figures = _figures(client, delivered, last if delivered else client["t0"])
    figures["ledger_cpu_us_per_event"] = (cpu_seconds(services.ledger.pid) - ledger_cpu) / client["sent"] * 1e6
    return figures


def _meterkit_run(services: Services, name: str, n: int, sized: bool) -> dict[str, Any]:
    with agent(services, name) as (proc, spool):
        agent_cpu = cpu_seconds(proc.pid)
        spec = {"peer": "meterkit", "n": n, "sized": sized, "account": name, "org": name}
        figures = _ledger_run(services, spec | {"spool": str(spool), "catalog": str(services.catalog)}, 30)
        figures["agent_cpu_us_per_event"] = (cpu_seconds(proc.pid) - agent_cpu) / n * 1e6
    return figures


def _sink_run(services: Services, key: str, name: str, n: int, sized: bool) -> dict[str, Any]:
    kind = {"segment": "segment", "otel_logs": "otlp_logs", "otel_counter": "otlp_metric_sum"}[key]
    spec = {"peer": key, "n": n, "sized": sized, "account": name, "url": services.sink_url}
    sink_cpu = cpu_seconds(services.sink.pid)
    client = _client_run(spec, 1800)
    delivered, last = _delivery(lambda: services.sink_count(f"{kind}/{name}"), n, 3)
    figures = _figures(client, delivered, last if delivered else client["t0"])
    figures["receiver_cpu_us_per_event"] = (cpu_seconds(services.sink.pid) - sink_cpu) / n * 1e6
    return figures


def _one(services: Services, key: str, n: int, sized: bool, run: str) -> dict[str, Any]:
    name = f"{key.replace('_', '-')}-{run}"
    if key == "meterkit":
        return _meterkit_run(services, name, n, sized)
    if key.startswith("m3ter"):
        spec = {"peer": key, "n": n, "account": name, "org": name, "url": services.ledger_url}
        return _ledger_run(services, spec | {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, 10)
    return _sink_run(services, key, name, n, sized)


def _guarded(what: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A peer that fails is reported as failed, with the reason; the others still run."""
    try:
        return what()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[-400:]}"}


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The peer table's figures. ``BENCH_PEERS`` (comma-separated keys) runs only those peers."""
    say = progress or (lambda _: None)
    only = {key for key in os.environ.get("BENCH_PEERS", "").split(",") if key}
    results: dict[str, Any] = {"peers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        services = Services(Path(tmp))
        try:
            for key, label, how, (cost, burst) in peer_list(quick):
                if only and key not in only:
                    continue
                say(f"peers: {label}")
                entry: dict[str, Any] = {"label": label, "how": how}
                entry["cost"] = _guarded(partial(_one, services, key, cost, True, "cost"))
                if burst is not None:
                    entry["burst"] = _guarded(partial(_one, services, key, burst, False, "burst"))
                results["peers"][key] = entry
            if not only or "meterkit_sdk" in only:
                say("peers: meterkit decorator and burst to the spool")
                import sdk_costs

                results["meterkit_sdk"] = _guarded(lambda: sdk_costs.run(str(services.catalog), quick))
        finally:
            services.close()
    return results


if __name__ == "__main__":
    quick_run = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    print(json.dumps(run(quick_run, lambda line: print(line, file=sys.stderr)), indent=2))
