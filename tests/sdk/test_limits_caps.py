"""Caps decided from a balance snapshot file plus what this process allowed since."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

import meterkit
from meterkit._plans import period_bounds

from .limits_helpers import write_plans


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_snapshot(path: Path, balances: dict[tuple[str, str | None], str], age: timedelta = timedelta(0)) -> None:
    now = datetime.now(timezone.utc) - age
    start = period_bounds(int(time.time() * 1000), "month")[0]
    path.write_bytes(
        orjson.dumps(
            {
                "as_of": iso(now),
                "fetched_at": iso(now),
                "balances": [
                    {
                        "plan": "growth",
                        "meter": meter,
                        "field": field,
                        "account": "acme",
                        "period_start": iso(datetime.fromtimestamp(start / 1000, timezone.utc)),
                        "value": value,
                    }
                    for (meter, field), value in balances.items()
                ],
                "notified": [],
            }
        )
    )
    stamp = time.time() + 5  # a changed mtime, whatever the file system's resolution
    os.utime(path, (stamp, stamp))


def configure(tmp_path: Path, limits: str, **settings: object) -> Path:
    plans = write_plans(tmp_path / "plans.yaml", limits)
    snapshot = tmp_path / "balances.json"
    meterkit.configure(spool_dir=tmp_path / "spool", plans=plans, balances_path=snapshot, **settings)
    return snapshot


def test_hard_cap_with_grace_refuses_past_it(tmp_path: Path) -> None:
    snapshot = tmp_path / "balances.json"
    write_snapshot(snapshot, {("api_calls", None): "1040"})
    configure(tmp_path, "{meter: api_calls, cap: 1000, period: month, mode: hard, grace_percent: 5}")
    first = meterkit.allow("api_calls", account="acme", quantity=10)  # 1040 + 10 = 1050: the cap plus 5 %
    assert first.allowed and first.remaining == 0 and not first.fallback
    refused = meterkit.allow("api_calls", account="acme")  # this process's 10 count: 1051 > 1050
    assert not refused.allowed and refused.reason == "hard cap reached" and refused.remaining == 0
    assert 0 < refused.retry_after <= 31 * 86400


def test_soft_cap_allows_and_says_so(tmp_path: Path) -> None:
    snapshot = tmp_path / "balances.json"
    write_snapshot(snapshot, {("data_downloaded", "bytes"): "10737418000"})
    configure(tmp_path, "{meter: data_downloaded, field: bytes, cap: 10737418240, period: month, mode: soft}")
    under = meterkit.allow("data_downloaded", account="acme", amounts={"bytes": 240})
    assert under.allowed and under.reason == "allowed"
    over = meterkit.allow("data_downloaded", account="acme", amounts={"bytes": 1})
    assert over.allowed and over.reason == "soft cap exceeded" and not over.fallback


def test_a_newer_snapshot_replaces_what_this_process_counted(tmp_path: Path) -> None:
    snapshot = tmp_path / "balances.json"
    write_snapshot(snapshot, {("api_calls", None): "0"}, age=timedelta(seconds=10))
    configure(tmp_path, "{meter: api_calls, cap: 100, period: month, mode: hard}")
    assert meterkit.allow("api_calls", account="acme", quantity=60).remaining == 40
    write_snapshot(snapshot, {("api_calls", None): "60"})  # the ledger has them now
    from meterkit import _allow

    assert _allow.engine is not None
    _allow.engine.snapshots._next_check = 0.0  # look at the file now, not within a second
    assert meterkit.allow("api_calls", account="acme", quantity=40).remaining == 0  # 60, not 120


@pytest.mark.parametrize(("policy", "allowed"), [("fail_open", True), ("fail_closed", False)])
@pytest.mark.parametrize("state", ["missing", "stale", "unreadable"])
def test_no_usable_snapshot_follows_the_policy(tmp_path: Path, policy: str, allowed: bool, state: str) -> None:
    snapshot = tmp_path / "balances.json"
    if state == "stale":
        write_snapshot(snapshot, {("api_calls", None): "0"}, age=timedelta(minutes=10))
    elif state == "unreadable":
        snapshot.write_text("{not json")
    configure(tmp_path, "{meter: api_calls, cap: 100, period: month}", limits_fallback=policy)
    decision = meterkit.allow("api_calls", account="acme")
    assert decision.allowed is allowed and decision.fallback
    assert decision.reason.endswith(policy)
    assert ("stale" in decision.reason) is (state == "stale")


def test_decorated_call_counts_the_field_it_recorded(tmp_path: Path) -> None:
    snapshot = tmp_path / "balances.json"
    write_snapshot(snapshot, {("data_downloaded", "bytes"): "0"})
    configure(tmp_path, "{meter: data_downloaded, field: bytes, cap: 1000, period: month, mode: hard}")

    @meterkit.meter("data_downloaded", account="acme", limit=True)
    def download() -> None:
        active = meterkit.active_meter()
        assert active is not None
        active.measure["bytes"] = 1000

    download()
    with pytest.raises(meterkit.LimitExceeded) as raised:
        download()
    assert raised.value.decision.reason == "hard cap reached"


@pytest.mark.parametrize("bad", [-1_000_000, float("nan"), Decimal("-Infinity"), "5", True])
def test_an_amount_a_cap_cannot_count_is_a_counted_fallback_and_never_hands_units_back(
    tmp_path: Path, bad: object
) -> None:
    write_snapshot(tmp_path / "balances.json", {("data_downloaded", "bytes"): "1000"})
    configure(tmp_path, "{meter: data_downloaded, field: bytes, cap: 1000, period: month, mode: hard}")
    odd = meterkit.allow("data_downloaded", account="acme", amounts={"bytes": bad})
    assert odd.fallback and odd.reason == "bad amount; fail_open"
    after = meterkit.allow("data_downloaded", account="acme", amounts={"bytes": 500_000})
    assert not after.allowed and after.reason == "hard cap reached"  # nothing was handed back
    assert meterkit.stats()["limits"]["bad amount"] == 1


def test_a_float_amount_counts_as_the_decimal_it_was_written_as(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "balances.json", {("data_downloaded", "bytes"): "999.5"})
    configure(tmp_path, "{meter: data_downloaded, field: bytes, cap: 1000, period: month, mode: hard}")
    assert meterkit.allow("data_downloaded", account="acme", amounts={"bytes": 0.5}).allowed
    assert not meterkit.allow("data_downloaded", account="acme", amounts={"bytes": 0.1}).allowed
