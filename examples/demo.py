"""`make demo`: the main job on the embedded default, end to end, on 127.0.0.1.

1. starts a ledger (SQLite) and an agent as real processes;
2. runs the example web API (examples/app.py), instrumented with meterkit;
3. sends it a few thousand requests from several accounts;
4. waits until the agent has delivered every measurement to the ledger;
5. prints per-account usage from the ledger, then stops everything cleanly;
6. serves the ledger again, as the printed console command does, so it judges the
   history's drop and spike, and prints that command and the console's address.

Besides the requests, it records what the console's pages need and live traffic has not
yet made: an hour-by-hour history in which one account spikes and one stops (Signals),
and a measurement cancelled with `meterkit correct` (an account's corrections). The
ledger runs with examples/demo-plans.yaml (bills, caps) and examples/demo-signals.yaml
(hourly drops and spikes).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))

import app  # the example app sits beside this file

import meterkit

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
ACCOUNTS = ["acme", "globex", "initech", "umbrella"]
REQUESTS = 3_000
ORG = "demo"
PLANS = Path(__file__).with_name("demo-plans.yaml")
SIGNALS = Path(__file__).with_name("demo-signals.yaml")
TOKEN_FILE = WORK / "ledger.token"
#: A fresh token each run, in a file only its owner reads (the ledger's --token-file); the
#: agent and the CLI get it in their environment: on a command line (`--token`) every user
#: of the machine would see it in `ps`. It is never printed.
TOKEN = secrets.token_urlsafe(24)
ENV = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN, "METERKIT_AGENT_TOKEN": TOKEN}
ENV.pop("METERKIT_LEDGER_TOKEN_FILE", None)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The console's port in the printed command (any free port will do).
CONSOLE_PORT = 8089
#: API calls per hour of the history, oldest first, the last entry being the hour under way:
#: three quiet hours, then hooli's usage jumps and stark's stops. Whichever of the last two
#: hours a ledger judges (the last closed one when it starts), one spikes and one drops
#: (examples/demo-signals.yaml: window 3, factor 3).
HISTORY = {"hooli": [4, 5, 4, 30, 30], "stark": [6, 5, 6, 0, 0]}
#: A call the demo records and then cancels, as one would traffic from a staging key.
STAGING_UID = "demo-staging-call-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meterkit_cli(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else None
    command = [sys.executable, "-m", "meterkit_agent.cli", *args]
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)


def ledger_args(db: str, port: int) -> list[str]:
    """The ledger's arguments, the same for the demo's run and the console command."""
    return [
        "ledger", "serve", "--db", db, "--port", str(port), "--token-file", rel(TOKEN_FILE),
        "--catalog", rel(app.CATALOG), "--plans", rel(PLANS), "--signals", rel(SIGNALS),
    ]  # fmt: skip


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def write_token() -> None:
    """The token file, readable by its owner only (the ledger refuses one others can read)."""
    fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(TOKEN + "\n")


def start_ledger(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    command = [sys.executable, "-m", "meterkit_agent.cli", *ledger_args(db, port)]
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def ledger_up(url: str) -> Callable[[], bool]:
    def up() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    return up


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}; see the logs in {WORK}")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    write_token()
    spool, state = WORK / "spool", WORK / "agent"
    db = f"sqlite:///{rel(WORK / 'ledger.db')}"
    port = free_port()
    ledger_url = f"http://127.0.0.1:{port}"

    print(f"1. ledger on {ledger_url} (SQLite at .demo/ledger.db; plans {rel(PLANS)}, signals {rel(SIGNALS)}),")
    print("   agent tailing .demo/spool")
    ledger = start_ledger(db, port, WORK / "ledger.log")
    agent = meterkit_cli(
        "agent", "run", "--spool-dir", str(spool), "--catalog", str(app.CATALOG), "--url", ledger_url,
        "--org", ORG, "--state-dir", str(state), "-v", log=WORK / "agent.log",
    )  # fmt: skip
    try:
        wait_for(ledger_up(ledger_url), 30, "the ledger")
        meterkit.configure(catalog=app.CATALOG, spool_dir=spool)
        statuses = send_requests()
        history = record_history()
        meterkit.shutdown()

        expected = (
            statuses.count(200) * 2 + statuses.count(404) + history
        )  # an API call each, plus the endpoint's own meter
        print(f"3. waiting for the agent to deliver {expected:,} measurements")

        def delivered() -> int:  # `/health` says only that the ledger is alive
            r = requests.get(f"{ledger_url}/organizations/{ORG}/uids", headers=AUTH, timeout=5)
            r.raise_for_status()
            return len(r.json()["uids"])

        wait_for(lambda: delivered() >= expected, 60, "delivery (dead letters: .demo/agent/deadletter.db)")
        cancel_staging_call(spool, ledger_url)
        wait_for(lambda: delivered() > expected, 30, "the correction's delivery")
        wait_for(lambda: not list(spool.glob("*.mks")), 30, "the agent to retire delivered segments")
        print(f"   ledger holds {delivered():,} measurements; spool segments left: {len(list(spool.glob('*.mks')))}")
        print_usage(ledger_url)
    finally:
        code = stop(agent)
        stop(ledger)
        print(f"5. agent drained and exited with {code}; ledger stopped. Logs and data are in .demo/")
    judge_and_list(db)
    print_console_hint()


def send_requests() -> list[int]:
    """The example API, serving the demo's requests from several accounts; their statuses."""
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
    return statuses


def record_history() -> int:
    """Records :data:`HISTORY` (API calls in the hours before now, through the SDK like any
    measurement, with their own ``ts``) and the staging call to cancel; how many."""
    now = datetime.now(timezone.utc)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    count = 0
    for account, per_hour in HISTORY.items():
        for back, n in zip(range(len(per_hour) - 1, -1, -1), per_hour, strict=True):
            start = this_hour - timedelta(hours=back)
            for i in range(n):  # a minute apart; the hour under way's never after now
                ts = min(start + timedelta(minutes=i), now - timedelta(milliseconds=1))
                meterkit.record("api_calls", account=account, measure={"calls": 1, "seconds": 0.002},
                                what={"endpoint": "/download"}, other={"status": "ok"}, ts=ts)  # fmt: skip
                count += 1
    meterkit.record("api_calls", account="acme", measure={"calls": 1, "seconds": 0.002}, what={"endpoint": "/download"},
                    other={"status": "ok"}, metadata={"request_id": "staging-1"}, uid=STAGING_UID)  # fmt: skip
    hours = len(next(iter(HISTORY.values())))
    print(f"   and {count} API calls of {', '.join(HISTORY)} over the last {hours} hours, plus one staging call")
    return count + 1


def cancel_staging_call(spool: Path, ledger_url: str) -> None:
    """`meterkit correct --cancel`: its reversal travels the spool and the agent like the rest."""
    print(f"   cancelling {STAGING_UID} with `meterkit correct --cancel`")
    sys.stdout.flush()
    subprocess.run(
        [sys.executable, "-m", "meterkit_agent.cli", "correct", "--uid", STAGING_UID, "--cancel",
         "--reason", "demo: traffic from the staging key", "--url", ledger_url, "--org", ORG,
         "--spool-dir", str(spool), "--catalog", str(app.CATALOG)],
        check=True, env=ENV, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def print_usage(ledger_url: str) -> None:
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
        cli = [sys.executable, "-m", "meterkit_agent.cli", "usage", "--url", ledger_url, "--org", ORG, *args]
        subprocess.run(cli, check=True, env=ENV)
        print()


def judge_and_list(db: str) -> None:
    """Serves the ledger again with the console command's arguments: starting, it judges the
    last closed hour, where the history's spike and drop are; lists what the ledger noticed."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = start_ledger(db, port, WORK / "ledger.log")
    try:
        wait_for(ledger_up(url), 30, "the ledger")

        def judged() -> bool:
            r = requests.get(f"{url}/organizations/{ORG}/notifications", headers=AUTH, timeout=5)
            r.raise_for_status()
            return {"usage_spike", "usage_drop"} <= {n["type"] for n in r.json()["notifications"]}

        wait_for(judged, 30, "the ledger to judge the history's drop and spike")
        print("\n6. what the ledger noticed (caps, price bands, drops and spikes), from its outbox:\n")
        sys.stdout.flush()
        cli = [sys.executable, "-m", "meterkit_agent.cli", "notifications", "list", "--url", url, "--org", ORG]
        subprocess.run(cli, check=True, env=ENV)
    finally:
        stop(ledger)


def print_console_hint() -> None:
    """How to look at the demo's data in the console (docs/console.md): the same ledger,
    served again on the data the demo left in .demo/, with the same plans, signals and token."""
    meterkit_bin = Path(sys.executable).with_name("meterkit")
    if meterkit_bin.exists() and meterkit_bin.is_relative_to(ROOT):
        program = rel(meterkit_bin)
    else:
        program = f"{Path(sys.executable).name} -m meterkit_agent.cli"
    command = " ".join([program, *ledger_args(f"sqlite:///{rel(WORK / 'ledger.db')}", CONSOLE_PORT)])
    print(
        "\n7. the usage console, on the demo's data: from this directory, serve the ledger again\n"
        f"   {command}\n"
        f"   then open http://127.0.0.1:{CONSOLE_PORT}/console/?org={ORG}\n"
        f"   It asks for the ledger's token: paste the contents of {rel(TOKEN_FILE)} (`cat {rel(TOKEN_FILE)}`);\n"
        "   the tab keeps it until it closes. The ledger listens on 127.0.0.1 only."
    )


if __name__ == "__main__":
    main()
