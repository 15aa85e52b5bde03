"""A throwaway real PostgreSQL server on 127.0.0.1 for the bench: ``postgres_server()``
yields its URL.

The code lives in :mod:`meterkit_agent.testing`, which the tests' ``postgres_url`` fixture
uses too: both already import ``meterkit_agent``, so the bench and the tests start their
server the same way without either importing the other. The bench's server is durable
(PostgreSQL's default ``fsync``): a throughput figure should include what a commit costs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from meterkit_agent.testing import Postgres, PostgresUnavailable, running_postgres


@contextlib.contextmanager
def postgres_server(durable: bool = True) -> Iterator[str]:
    """Start a PostgreSQL server for the ``with`` block and yield its URL; stop it and
    delete its data after. Raises :class:`PostgresUnavailable` without the server programs."""
    with running_postgres(durable=durable) as server:
        yield server.url


__all__ = ["Postgres", "PostgresUnavailable", "postgres_server", "running_postgres"]

if __name__ == "__main__":
    with postgres_server() as url:
        print(json.dumps({"url": url}))
