"""Global rate limits through a real redis-server: two processes with separate state
(two "hosts") share one limit; NOSCRIPT is recovered; Redis down is a fallback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import meterkit

from ..redis_server import running_redis
from .limits_helpers import results, start_hammers, write_plans


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


def test_two_hosts_share_a_global_limit(tmp_path: Path, redis_url: str) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 100, per: second, burst: 30, scope: global}")
    procs = [
        *start_hammers(1, str(plans), str(tmp_path / "a"), str(tmp_path / "sa"), "1.5", f"redis_url={redis_url}"),
        *start_hammers(1, str(plans), str(tmp_path / "b"), str(tmp_path / "sb"), "1.5", f"redis_url={redis_url}"),
    ]
    total, first, last = results(procs)
    # Redis's clock, not ours, decides; both run within [first, last] on this machine's clock
    bound = 30 + 100 * (last - first) / 1e9 + 1
    assert 30 < total <= bound, (total, bound)


def test_noscript_is_loaded_and_retried(tmp_path: Path, redis_url: str) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 1, per: hour, burst: 2, scope: global}")
    meterkit.configure(spool_dir=tmp_path / "s", plans=plans, redis_url=redis_url)
    redis.Redis.from_url(redis_url).flushall()
    assert meterkit.allow("api_calls", account="acme").allowed
    redis.Redis.from_url(redis_url).script_flush()
    second = meterkit.allow("api_calls", account="acme")
    assert second.allowed and not second.fallback and second.remaining == 0
    third = meterkit.allow("api_calls", account="acme")
    assert not third.allowed and 3590 < third.retry_after <= 3600


@pytest.mark.parametrize(("policy", "allowed"), [("fail_open", True), ("fail_closed", False)])
def test_redis_down_follows_the_fallback_policy(tmp_path: Path, policy: str, allowed: bool) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 10, per: second, burst: 10, scope: global}")
    with running_redis() as url:
        pass  # stopped: nothing listens on its port now
    meterkit.configure(spool_dir=tmp_path / "s", plans=plans, redis_url=url, limits_fallback=policy)
    decision = meterkit.allow("api_calls", account="acme")
    assert decision.allowed is allowed and decision.fallback
    assert decision.reason == f"redis unavailable; {policy}"
    assert meterkit.stats()["limits"]["redis unavailable"] == 1
