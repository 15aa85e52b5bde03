"""A real ``redis-server`` for tests: ``with running_redis() as url: ...``, skipping the
test when the binary is absent. The server is :func:`meterkit_agent.testing.running_redis`'s,
the one the bench starts too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from meterkit_agent import testing


@contextmanager
def running_redis(timeout: float = 10.0) -> Iterator[str]:
    """A fresh redis-server on 127.0.0.1; yields its ``redis://`` URL."""
    with testing.running_redis(timeout) as url:
        if url is None:
            pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
        yield url
