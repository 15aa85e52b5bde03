"""`make demo`: the main job on the embedded default, end to end, on 127.0.0.1.

1. starts a ledger (SQLite) and an agent as real processes;
2. runs the example web API (examples/app.py), instrumented with meterkit;
3. sends it a few thousand requests from several accounts;
4. waits until the agent has delivered every measurement to the ledger;
5. prints per-account usage from the ledger, then stops everything cleanly.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))

import app  # the example app sits beside this file

import meterkit

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
ACCOUNTS = ["acme", "globex", "initech", "umbrella"]
REQUESTS = 3_000
TOKEN = "demo-token"  # noqa: S105 - a local demo's made-up token
ORG = "demo"
#: The token reaches the ledger, the agent and `meterkit usage` in their environment: on a
#: command line (`--token`) every user of the machine would see it in `ps`.
ENV = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN, "METERKIT_AGENT_TOKEN": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meterkit_cli(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else None
    command = [sys.executable, "-m", "meterkit_agent.cli", *args]
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}; see the logs in {WORK}")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    spool, state = WORK / "spool", WORK / "agent"
    port = free_port()
    ledger_url = f"http://127.0.0.1:{port}"

    print(f"1. ledger on {ledger_url} (SQLite at .demo/ledger.db), agent tailing .demo/spool")
    ledger = meterkit_cli(
        "ledger",
        "serve",
        "--db",
        f"sqlite:///{WORK / 'ledger.db'}",
        "--port",
        str(port),
        "--catalog",
        str(app.CATALOG),
        log=WORK / "ledger.log",
    )
    agent = meterkit_cli(
        "agent", "run", "--spool-dir", str(spool), "--catalog", str(app.CATALOG), "--to", ledger_url,
        "--org", ORG, "--state-dir", str(state), "-v", log=WORK / "agent.log",
    )  # fmt: skip
    try:

        def ledger_up() -> bool:
            try:
                return requests.get(f"{ledger_url}/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(ledger_up, 30, "the ledger")

        meterkit.configure(catalog=app.CATALOG, spool_dir=spool)
        server = app.serve("127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        print(f"2. example API on {base}; sending {REQUESTS:,} requests from {len(ACCOUNTS)} accounts")

        rng = random.Random(7)
        plan = []
        for i in range(REQUESTS):
            account = rng.choice(ACCOUNTS)
            user = f"{account}-user{rng.randint(1, 5)}"
            path = rng.choice(["/download", "/download", "/login", "/session", "/nope"])
            plan.append((account, f"{base}{path}?user={user}&size={rng.randint(1, 8) * 1_048_576}", f"req-{i}"))
        local = threading.local()

        def send(item: tuple[str, str, str]) -> int:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            account, url, request_id = item
            headers = {"X-Account": account, "X-Request-Id": request_id}
            return int(local.session.get(url, headers=headers, timeout=10).status_code)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(send, plan))
        print(f"   {len(statuses):,} responses in {time.perf_counter() - started:.1f} s")
        server.shutdown()
        meterkit.shutdown()

        expected = statuses.count(200) * 2 + statuses.count(404)  # an API call each, plus the endpoint's own meter
        print(f"3. waiting for the agent to deliver {expected:,} measurements")

        def delivered() -> int:  # `/health` says only that the ledger is alive
            r = requests.get(f"{ledger_url}/organizations/{ORG}/uids", headers=AUTH, timeout=5)
            r.raise_for_status()
            return len(r.json()["uids"])

        wait_for(lambda: delivered() >= expected, 60, "delivery (dead letters: .demo/agent/deadletter.db)")
        wait_for(lambda: not list(spool.glob("*.mks")), 30, "the agent to retire delivered segments")
        print(f"   ledger holds {delivered():,} measurements; spool segments left: {len(list(spool.glob('*.mks')))}")

        print("\n4. usage per account, from the ledger:\n")
        queries = [
            ("API calls", ["--meter", "api_calls", "--field", "calls"]),
            ("data downloaded, MiB (derived field `mib`)", ["--meter", "data_downloaded", "--field", "mib"]),
            ("data downloaded, billable GiB (quantityPerUnit 1024, rounded UP)",
             ["--meter", "data_downloaded", "--field", "mib", "--quantity-per-unit", "1024", "--rounding", "UP"]),
            ("logins, unique users", ["--meter", "logins", "--aggregation", "UNIQUE", "--field", "user"]),
            ("session seconds", ["--meter", "session_duration", "--field", "seconds"]),
        ]  # fmt: skip
        for title, args in queries:
            print(f"-- {title}")
            sys.stdout.flush()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "meterkit_agent.cli",
                    "usage",
                    "--url",
                    ledger_url,
                    "--org",
                    ORG,
                    *args,
                ],
                check=True,
                env=ENV,
            )
            print()
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        ledger.send_signal(signal.SIGTERM)
        ledger.wait(30)
        print(f"5. agent drained and exited with {code}; ledger stopped. Logs and data are in .demo/")


if __name__ == "__main__":
    main()
