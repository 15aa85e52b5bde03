"""`make demo`: run the example API, send it traffic from several accounts, show the spool.

Everything runs on 127.0.0.1 with a fresh spool under .demo/. (When the agent and ledger
land, this demo grows to deliver the spool and print per-account usage from the ledger.)
"""

from __future__ import annotations

import random
import shutil
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
REQUESTS = 2_000


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    spool = WORK / "spool"
    meterkit.configure(catalog=app.CATALOG, spool_dir=spool)
    server = app.serve("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    print(f"example API on {base}; sending {REQUESTS} requests from {len(ACCOUNTS)} accounts")

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
        return local.session.get(
            url, headers={"X-Account": account, "X-Request-Id": request_id}, timeout=10
        ).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, plan))
    elapsed = time.perf_counter() - started
    print(f"{len(statuses)} responses in {elapsed:.1f} s ({statuses.count(200)} ok, {statuses.count(404)} not found)")

    server.shutdown()
    meterkit.shutdown()
    print(f"\n$ meterkit spool inspect {spool.relative_to(ROOT)}")
    subprocess.run([sys.executable, "-m", "meterkit_agent.cli", "spool", "inspect", str(spool)], check=True)


if __name__ == "__main__":
    main()
