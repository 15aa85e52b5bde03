"""Global rate limits: GCRA run inside Redis, one round trip a decision.

The script (:data:`SCRIPT`) reads the TAT, decides and writes it in one ``EVALSHA``;
Redis runs scripts one at a time, so no two decisions interleave, whichever host they
come from. The clock is Redis's own ``TIME`` (microseconds), so hosts whose clocks
disagree still share one limit. A script not cached on the server (a restart, a
``SCRIPT FLUSH``) answers NOSCRIPT: it is loaded and the call retried once.

Redis's Lua 5.1 counts in doubles, exact to 2**53: the TAT is stored as whole
microseconds plus a fraction in the limit's ticks (``_gcra``), and only the difference
from now, at most twice the bucket in ticks, is ever multiplied out; the plans reader
refuses a global limit whose bucket would not fit (``_planlimits``). Numbers are written
with ``%d``: Lua's own ``tostring`` keeps 14 digits. A key expires when its bucket is full
again, since then it means nothing.

``redis`` (redis-py) is an optional dependency, ``pip install 'meterkit[redis]'``; it is
imported only when a plan has a global limit.
"""

from __future__ import annotations

from typing import Any

from ._gcra import Rate

SCRIPT = """
local denom = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local quantity = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = redis.call('HMGET', KEYS[1], 'w', 'f')
local diff = 0
if stored[1] then
  local whole = tonumber(stored[1])
  if whole >= now then diff = (whole - now) * denom + tonumber(stored[2]) end
end
local new = diff + quantity * interval
if new <= capacity then
  local frac = new % denom
  local whole = now + (new - frac) / denom
  redis.call('HSET', KEYS[1], 'w', string.format('%d', whole), 'f', string.format('%d', frac))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.floor(new / denom / 1000) + 1))
  return {1, math.floor((capacity - new) / interval), 0}
end
return {0, math.floor((capacity - diff) / interval), new - capacity}
"""

#: Prefix of every key meterkit writes in Redis.
KEY_PREFIX = "meterkit:gcra:"


class RedisUnavailable(Exception):
    """Redis did not answer (or is not installed): decided by the fallback policy."""


def connect(url: str, timeout_millis: int) -> Any:
    """A redis-py client for ``url``, with both timeouts at ``timeout_millis``."""
    try:
        import redis
    except ImportError:
        raise RedisUnavailable("a global limit needs redis-py: pip install 'meterkit[redis]'") from None
    seconds = timeout_millis / 1000
    return redis.Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds)


class RedisGcra:
    """One global rate limit; its state lives in Redis under ``meterkit:gcra:<limit>:<account>``."""

    __slots__ = ("client", "key", "rate", "sha")

    def __init__(self, rate: Rate, key: str, client: Any) -> None:
        self.rate, self.key, self.client = rate, key, client
        self.sha: str | None = None

    def decide(self, account: str, quantity: int) -> tuple[bool, int, int]:
        """(allowed, remaining, retry_after_ns). Raises :class:`RedisUnavailable`."""
        import redis

        rate = self.rate
        args = (rate.denom, rate.interval, rate.capacity, quantity)
        key = f"{KEY_PREFIX}{self.key}:{account}"
        try:
            if self.sha is None:
                self.sha = self.client.script_load(SCRIPT)
            try:
                allowed, remaining, excess = self.client.evalsha(self.sha, 1, key, *args)
            except redis.exceptions.NoScriptError:
                self.sha = self.client.script_load(SCRIPT)
                allowed, remaining, excess = self.client.evalsha(self.sha, 1, key, *args)
        except redis.exceptions.RedisError as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
        retry_us = rate.retry_units(int(excess)) if excess else 0
        return bool(allowed), int(remaining), retry_us * 1000
