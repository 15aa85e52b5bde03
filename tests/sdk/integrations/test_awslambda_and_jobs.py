"""The Lambda wrapper (called as Lambda's runtime calls a handler) and short-lived jobs:
what they record is in the spool before the process can be frozen or killed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import meterkit

from ..helpers import losses, spooled
from .conftest import CATALOG

REFUSED = meterkit.Decision(False, 0, 4.2, "rate limited", False, "test")


def test_the_lambda_wrapper_has_spooled_the_invocation_when_it_returns(tmp_path: Path) -> None:
    from meterkit.integrations.awslambda import metered_handler

    spool = tmp_path / "spool"
    # A long flush interval: only the wrapper's own flush can have written it in time.
    meterkit.configure(CATALOG, spool_dir=spool, flush_interval_millis=600_000)

    @metered_handler("api_calls", account="X-Account", measure={"calls": 1}, outcome="outcome", status="status")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        meterkit.record("downloads", measure={"bytes": 9})
        if event["path"] == "/limited":
            raise meterkit.LimitExceeded(REFUSED)
        return {"statusCode": 404 if event["path"] == "/missing" else 200, "body": "x"}

    def event(path: str) -> dict[str, Any]:
        return {"httpMethod": "GET", "path": path, "headers": {"x-account": "acme"}, "requestContext": {}}

    assert handler(event("/ok"), None)["statusCode"] == 200
    assert [(m["meter"], m["account"]) for m in spooled(spool)] == [("downloads", "acme"), ("api_calls", "acme")]
    assert handler(event("/missing"), None)["statusCode"] == 404
    answer = handler(event("/limited"), None)
    assert (answer["statusCode"], answer["headers"]["Retry-After"]) == (429, "5")
    assert [m["other"] for m in spooled(spool) if m["meter"] == "api_calls"] == [
        {"outcome": "ok", "status": "200"},
        {"outcome": "client_error", "status": "404"},
        {"outcome": "limited", "status": "429"},
    ]
    with pytest.raises(meterkit.LimitExceeded):  # not an HTTP event: nothing to answer with a 429
        handler({"path": "/limited"}, None)


JOB = """
import os, sys
import meterkit
meterkit.configure(spool_dir=sys.argv[1], flush_interval_millis=600_000, durability=sys.argv[2])
with meterkit.context(account="acme"):
    for i in range(500):
        meterkit.record("downloads", measure={"bytes": i})
assert meterkit.flush(30.0)
os._exit(0)  # as a serverless runtime or a killed cron job ends: no atexit, no shutdown
"""


@pytest.mark.parametrize("durability", ["buffered", "sync"])
def test_a_job_that_flushes_then_exits_abruptly_loses_nothing(tmp_path: Path, durability: str) -> None:
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JOB), str(spool), durability], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = spooled(spool)
    assert sorted(m["measure"]["bytes"] for m in found) == list(range(500))
    assert {m["account"] for m in found} == {"acme"}
    assert losses(spool) == {}
