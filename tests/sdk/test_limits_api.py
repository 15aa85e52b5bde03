"""``meterkit.allow`` and ``@meterkit.meter(..., limit=True)``: decisions, no limit,
LimitExceeded, and never raising in production mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import meterkit
from meterkit import _allow
from meterkit import _hostshare as hostshare

from .limits_helpers import write_plans


@pytest.fixture(autouse=True)
def forget_host_lock() -> Iterator[None]:
    """Unlink the host table's named semaphore after each test: it outlives the test's
    directory (and its process)."""
    yield
    table = _allow.engine._host if _allow.engine is not None else None
    if table is not None:
        table.sem.unlink()


def configure(tmp_path: Path, limits: str, **settings: object) -> None:
    plans = write_plans(tmp_path / "plans.yaml", limits)
    meterkit.configure(spool_dir=tmp_path / "spool", plans=plans, limits_state_dir=tmp_path / "state", **settings)


def test_no_plan_or_no_limit_is_allowed(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 1, per: hour, burst: 1, scope: process}")
    for meter, account in (("other_meter", "acme"), ("api_calls", "nobody")):
        decision = meterkit.allow(meter, account=account)
        assert decision == meterkit.Decision(True, None, 0.0, "no limit")
    assert meterkit.allow("api_calls").reason == "no account"


def test_account_comes_from_the_context(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 1, per: hour, burst: 1, scope: process}")
    with meterkit.context(account="acme"):
        assert meterkit.allow("api_calls").allowed
        assert not meterkit.allow("api_calls").allowed


def test_quantity_above_burst_can_never_be_allowed(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 5, per: second, burst: 5}")
    decision = meterkit.allow("api_calls", account="acme", quantity=6)
    assert not decision.allowed and decision.retry_after == float("inf") and decision.reason == "quantity above burst"


def test_decorator_with_limit_raises_instead_of_calling(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 1, per: hour, burst: 2}")
    calls = []

    @meterkit.meter("api_calls", account="acme", limit=True)
    def handler() -> str:
        calls.append(1)
        return "ok"

    assert handler() == "ok" and handler() == "ok"
    with pytest.raises(meterkit.LimitExceeded) as raised:
        handler()
    assert len(calls) == 2
    assert 3590 < raised.value.retry_after <= 3600
    assert raised.value.decision.reason == "rate limited" and not raised.value.decision.allowed
    assert meterkit.flush(5) and meterkit.stats()["written"] == 2  # the refused call recorded nothing


def test_async_decorator_and_with_block_check_too(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 1, per: hour, burst: 1, scope: process}")

    @meterkit.meter("api_calls", account="acme", limit=True)
    async def handler() -> int:
        return 1

    assert asyncio.run(handler()) == 1
    with pytest.raises(meterkit.LimitExceeded):
        asyncio.run(handler())
    with pytest.raises(meterkit.LimitExceeded), meterkit.meter("api_calls", account="acme", limit=True):
        pytest.fail("the block ran past its limit")


def test_production_mode_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 10, per: second, burst: 10, scope: process}")
    engine = _allow.engine
    assert engine is not None

    def broken(*args: object) -> None:
        raise RuntimeError("a bug inside meterkit")

    monkeypatch.setattr(engine, "route", broken)  # no route yet: allow() makes one first
    decision = meterkit.allow("api_calls", account="acme")
    assert decision.allowed and decision.fallback and decision.reason == "internal error (RuntimeError); fail_open"
    monkeypatch.undo()
    for bad in ({"quantity": "many"}, {"quantity": None}, {"amounts": 5}):
        assert isinstance(meterkit.allow("api_calls", account="acme", **bad), meterkit.Decision)  # type: ignore[arg-type]
    assert isinstance(meterkit.allow(object(), account=object()), meterkit.Decision)  # type: ignore[arg-type]


class Units(int):
    """An int subclass, as an IntEnum member is: decided as the int it is."""


@pytest.mark.parametrize("scope", ["process", "host"])
def test_a_quantity_that_is_no_whole_number_of_units_changes_nothing(tmp_path: Path, scope: str) -> None:
    """Production mode: the fallback policy decides a quantity below 1 (it would hand units
    back), a fraction (it would make the state inexact) or a bool, and the bucket is left
    as it was; an int subclass is its int."""
    configure(tmp_path, f"{{meter: api_calls, rate: 1, per: hour, burst: 3, scope: {scope}}}")
    for bad in (0, -5, 1.5, True):
        decision = meterkit.allow("api_calls", account="acme", quantity=bad)  # type: ignore[arg-type]
        assert decision.fallback and decision.reason == "bad quantity; fail_open", (bad, decision)
    assert meterkit.allow("api_calls", account="acme", quantity=Units(2)).remaining == 1
    assert meterkit.allow("api_calls", account="acme", quantity=4).reason == "quantity above burst"
    assert [meterkit.allow("api_calls", account="acme").allowed for _ in range(2)] == [True, False]
    assert meterkit.stats()["limits"]["bad quantity"] == 4


def test_stats_count_host_lock_take_overs(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 10, per: second, burst: 10}")
    assert meterkit.allow("api_calls", account="acme").allowed
    assert meterkit.stats()["limits"]["host_lock_recovered"] == 0
    table = _allow.engine._host if _allow.engine is not None else None
    assert table is not None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    assert gone.wait() == 0  # exited and waited for: its pid names no process now
    table.sem.acquire()  # held, and named for a process that is gone, as if it died inside
    hostshare.NAME_WORD.pack_into(table.mm, hostshare.NAME_AT, gone.pid)
    assert meterkit.allow("api_calls", account="acme").allowed  # takes the lock over, then decides
    assert meterkit.stats()["limits"]["host_lock_recovered"] == 1


def test_strict_mode_raises_for_misuse(tmp_path: Path) -> None:
    configure(tmp_path, "{meter: api_calls, rate: 10, per: second, scope: process}", mode="strict")
    with pytest.raises(ValueError, match="quantity"):
        meterkit.allow("api_calls", account="acme", quantity=0)


def test_plans_from_the_environment_and_a_bad_one_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text("plans: 5\n")
    monkeypatch.setenv("METERKIT_PLANS", str(path))
    monkeypatch.setenv("METERKIT_LIMITS_FALLBACK", "fail_closed")
    _allow.engine = None
    decision = meterkit.allow("api_calls", account="acme")
    assert not decision.allowed and decision.fallback and decision.reason == "plans file unusable; fail_closed"
    write_plans(path, "{meter: api_calls, rate: 1, per: hour, burst: 1, scope: process}")
    _allow.engine = None
    assert meterkit.allow("api_calls", account="acme").reason == "allowed"
    _allow.engine = None


def test_limit_exceeded_survives_pickling_as_itself() -> None:
    """A task queue (Celery) pickles a task's exception: it must come back as LimitExceeded."""
    import pickle

    from meterkit._decide import Decision

    refused = Decision(False, 0, 1.5, "rate limited", False, "growth: api_calls 1 per second, burst 1 (process)")
    again = pickle.loads(pickle.dumps(meterkit.LimitExceeded(refused)))  # noqa: S301 - our own bytes
    assert type(again) is meterkit.LimitExceeded
    assert again.retry_after == 1.5 and again.decision == refused
