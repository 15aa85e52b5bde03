"""The demo's workload (examples/demo.py: the same accounts, paths, users and sizes, from
the same seeded generator), as the measurements examples/app.py records for it, sent
straight to a ledger; plus what the demo has none of: an hour-by-hour history in which one
account spikes and one drops (signals), and a corrected measurement."""

from __future__ import annotations

import random
import time
from typing import Any

from meterkit._corrections import reversal
from meterkit._pseudonyms import Key, pseudonym

ACCOUNTS = ["acme", "globex", "initech", "umbrella"]
HOUR_MS = 3_600_000
#: a made-up key: the pseudonyms stored for a user field that says ``privacy: pseudonymize``
KEY = Key("k1", b"console-test-key-0123456789abcdef")


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def demo_requests(n: int, now_ms: int, pseudonymize: bool = False) -> list[dict[str, Any]]:
    """``n`` of the demo's requests, each as the measurements the example app records
    (with ``pseudonymize``, a download's user as the SDK writes it under :data:`KEY`)."""
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    for i in range(n):
        account = rng.choice(ACCOUNTS)
        user = f"{account}-user{rng.randint(1, 5)}"
        path = rng.choice(["/download", "/download", "/login", "/session", "/nope"])
        size = rng.randint(1, 8) * 1_048_576
        ts = iso(now_ms - (n - i) * 1_000)
        base = {"account": account, "ts": ts}
        status = "ok" if path != "/nope" else "not_found"
        if path == "/download":
            mib = round(size / 1_048_576, 3)
            who = pseudonym(user, KEY) if pseudonymize else user
            out.append({**base, "uid": f"dl-{i}", "meter": "data_downloaded", "measure": {"bytes": size, "mib": mib},
                        "who": {"user": who}, "where": {"region": "eu-west-1"}})  # fmt: skip
        elif path == "/login":
            out.append({**base, "uid": f"lg-{i}", "meter": "logins", "measure": {"logins": 1},
                        "who": {"user": user}, "where": {"country": "GB"}})  # fmt: skip
        elif path == "/session":
            out.append({**base, "uid": f"ss-{i}", "meter": "session_duration", "measure": {"seconds": 0.001},
                        "who": {"user": user}})  # fmt: skip
        out.append({**base, "uid": f"ac-{i}", "meter": "api_calls", "measure": {"calls": 1, "seconds": 0.002},
                    "what": {"endpoint": path}, "other": {"status": status}, "metadata": {"request_id": f"req-{i}"}})  # fmt: skip
    return out


def trend_history(now_ms: int) -> list[dict[str, Any]]:
    """Three quiet hours, then (in the last closed hour and this one) hooli spikes and
    stark stops: whichever hour the ledger judges last closed, one spikes, one drops."""
    this_hour = now_ms // HOUR_MS * HOUR_MS
    out = []
    for back in (4, 3, 2, 1, 0):
        start = this_hour - back * HOUR_MS
        plan = {"hooli": 2 if back >= 2 else 20, "stark": 2 if back >= 2 else 0}
        for account, n in plan.items():
            for i in range(n):
                ts = iso(min(start + i * 60_000, now_ms - 1))
                out.append({"uid": f"tr-{account}-{back}-{i}", "meter": "api_calls", "account": account, "ts": ts,
                            "measure": {"calls": 1, "seconds": 0.002}, "what": {"endpoint": "/download"},
                            "other": {"status": "ok"}})  # fmt: skip
    return out


def corrected(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """The reversal of acme's first API call: it no longer counts."""
    first = next(m for m in measurements if m["meter"] == "api_calls" and m["account"] == "acme")
    return reversal(first)
