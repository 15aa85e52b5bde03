"""Real parts: the ledger and the agent run as processes on 127.0.0.1, PostgreSQL as a
real server, and a fault-injecting HTTP proxy sits between agent and ledger. And ``http``:
``responses`` over the exporters' transport adapter, for request shapes and retry rules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from meterkit_agent.testing import PostgresUnavailable, postgres_server

TOKEN = "test-token-4f9a"

#: What the exporters' sessions send through (:class:`meterkit_agent.exporters.adapter.Adapter`):
#: ``responses`` patches ``HTTPAdapter.send`` by default, which that adapter overrides.
EXPORTER_TRANSPORT = "meterkit_agent.exporters.adapter.Adapter.send"


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    """``responses`` for the exporters, the m3ter token exchange, Stripe and the balance
    lookups: request shapes and retry rules. Delivery is proven against real servers."""
    with responses.RequestsMock(assert_all_requests_are_fired=False, target=EXPORTER_TRANSPORT) as mock:
        yield mock


#: A meter whose derived fields poison a record on demand: ``big`` passes 64 bits for
#: n >= 5, ``huge`` is infinite for n >= 2e8.
POISON_CATALOG = """
meters:
  - code: jobs
    name: Jobs
    data_fields:
      - {code: n, name: Units, category: MEASURE}
    derived_fields:
      - {code: big, name: Big, category: MEASURE, calculation: "n ^ 30"}
      - {code: huge, name: Huge, category: MEASURE, calculation: "n * 1e300"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a condition; never a bare sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meterkit_agent.cli", *args]


@dataclass
class Proc:
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(30)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class LedgerServer:
    url: str
    db: str
    proc: Proc
    _engine: Any = None

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        r.raise_for_status()
        return r.json()

    def count(self) -> int:
        """How many measurements the ledger stores, every organisation's (``Ledger.count``'s
        query), read from its database: ``/health`` says only that the ledger is alive."""
        if self._engine is None:
            from meterkit_agent.ledger.schema import make_engine

            self._engine = make_engine(self.db)
        with self._engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT coalesce(sum(count), 0) FROM hours").scalar_one())

    def restart(self) -> None:
        self.proc.kill(signal.SIGKILL)
        self.proc.start()
        wait_for(self.healthy, what="ledger restart")

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def token_file(directory: Path, token: str = TOKEN) -> Path:
    """``token`` in a file only its owner may read, as ``--token-file`` wants it: a token on
    the command line would be visible to every user in ``ps``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ledger-token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return path


def start_ledger(tmp_path: Path, db: str | None = None, extra: tuple[str, ...] = ()) -> LedgerServer:
    port = free_port()
    db = db or f"sqlite:///{tmp_path / 'ledger.db'}"
    tokens = token_file(tmp_path)
    proc = Proc(
        cli_cmd("ledger", "serve", "--db", db, "--port", str(port), "--token-file", str(tokens), *extra),
        tmp_path / "ledger.log",
    ).start()
    server = LedgerServer(f"http://127.0.0.1:{port}", db, proc)
    wait_for(server.healthy, what="ledger start")
    return server


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path)
    yield server
    server.proc.kill(signal.SIGTERM)


class FaultProxy:
    """Forwards POSTs to a target, misbehaving on command: status codes, delays, resets."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.plan: list[Any] = []  # each entry consumed by one request: int status, ("delay", s), "reset"
        self.lock = threading.Lock()
        self.seen: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with proxy.lock:
                    action = proxy.plan.pop(0) if proxy.plan else None
                    proxy.seen.append({k.lower(): v for k, v in self.headers.items()})
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                if isinstance(action, tuple) and action[0] == "delay":
                    time.sleep(action[1])
                if isinstance(action, int):
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")
                }
                try:
                    r = requests.post(proxy.target + self.path, data=body, headers=headers, timeout=30)
                except requests.RequestException:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(ledger: LedgerServer) -> Iterator[FaultProxy]:
    p = FaultProxy(ledger.url)
    yield p
    p.close()


def write_agent_config(
    tmp_path: Path,
    spool: Path,
    to: str,
    catalog: Path | None = None,
    extra_receivers: str = "",
    derive: bool = False,
    org: str = "test-org",
) -> Path:
    """The agent's configuration for a test: spool in, m3ter-compatible out (into ``org``),
    fast retries; with ``derive``, the catalog's derived fields are computed too."""
    catalog_line = f"catalog: {catalog}" if catalog else ""
    derive_line = f"  derive: {{{catalog_line}}}" if derive else ""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"""
receivers:
  spool: {{directory: {spool}, poll_interval_millis: 50}}
{extra_receivers}
processors:
  validate: {{{catalog_line}}}
{derive_line}
  batch: {{max_measurements: 500, timeout_millis: 100}}
exporters:
  m3ter:
    base_url: {to}
    org_id: {org}
    token: ${{LEDGER_TOKEN}}
    retry: {{initial_interval_millis: 50, max_interval_millis: 500, request_timeout_millis: 1000}}
service:
  state_dir: {tmp_path / "agent-state"}
  drain_timeout_millis: 5000
  pipelines:
    usage:
      receivers: [spool{", http" if extra_receivers else ""}]
      processors: [validate{", derive" if derive else ""}, batch]
      exporters: [m3ter]
"""
    )
    return cfg


def spawn_producer(spool: Path, count: int, pause_every: int) -> subprocess.Popen[bytes]:
    """A process recording ``count`` measurements of ``data_downloaded`` (``bytes`` = 0, 1,
    ...) into ``spool``, pausing 50 ms every ``pause_every``, then shutting its client down."""
    script = f"""
import time, meterkit
c = meterkit.Client(spool_dir={str(spool)!r}, flush_interval_millis=20, max_segment_bytes=64_000)
for i in range({count}):
    c.record("data_downloaded", account="acme", measure={{"bytes": i}})
    if i % {pause_every} == 0:
        time.sleep(0.05)
c.shutdown(30)
"""
    return subprocess.Popen([sys.executable, "-c", script])


def start_agent(tmp_path: Path, config: Path) -> Proc:
    """Start the agent and wait until it says it has started (its signal handlers are in)."""
    log = tmp_path / "agent.log"
    before = log.read_text().count("meterkit agent started") if log.exists() else 0
    proc = Proc(cli_cmd("agent", "run", "--config", str(config), "-v"), log, env={"LEDGER_TOKEN": TOKEN}).start()
    wait_for(lambda: log.read_text().count("meterkit agent started") > before or not proc.alive(), what="agent start")
    return proc


# -- PostgreSQL: a real server, started once per test session -----------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session, started as ``make bench`` starts its own
    (:mod:`meterkit_agent.testing`)."""
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:  # raised before the server starts, never by a test
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run installs them")
        pytest.skip(str(exc))
