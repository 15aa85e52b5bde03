"""A real ``redis-server`` for the bench: ``with running_redis() as url: ...`` (None when no
binary is installed). The code lives in :mod:`meterkit_agent.testing`, which the tests use
too, as ``bench/pgserver.py`` re-exports its PostgreSQL server."""

from meterkit_agent.testing import running_redis

__all__ = ["running_redis"]
