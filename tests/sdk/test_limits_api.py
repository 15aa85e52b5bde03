"""``meterkit.allow`` and ``@meterkit.meter(..., limit=True)``: decisions, no limit,
LimitExceeded, and never raising in production mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import meterkit
from meterkit import _allow

from .limits_helpers import write_plans


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

    monkeypatch.setattr(engine, "allow", broken)
    decision = meterkit.allow("api_calls", account="acme")
    assert decision.allowed and decision.fallback and decision.reason == "internal error (RuntimeError); fail_open"
    monkeypatch.undo()
    for bad in ({"quantity": "many"}, {"quantity": None}, {"amounts": 5}):
        assert isinstance(meterkit.allow("api_calls", account="acme", **bad), meterkit.Decision)  # type: ignore[arg-type]
    assert isinstance(meterkit.allow(object(), account=object()), meterkit.Decision)  # type: ignore[arg-type]


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
